"""conversion/convert_siglip2_to_hydrax_tok.py on tiny SigLIP 2 checkpoints built here, and its plan at real size."""

import json
import shutil
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import CLIPConfig, Qwen2Config, Siglip2Config, Siglip2Model, Siglip2VisionConfig, Siglip2VisionModel
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches
from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

from modeling_hydrax import HydraXConfig, HydraXTokModel


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "conversion"))

import convert_siglip2_to_hydrax_tok as converter  # noqa: E402
from build_hydrax import default_base_models  # noqa: E402
from checkpoint_importer import CheckpointImportError  # noqa: E402


TINY_TOWER = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)
TINY_VISION = dict(**TINY_TOWER, num_hidden_layers=4, patch_size=4, num_patches=16)
TINY_TEXT = dict(
    **TINY_TOWER, num_hidden_layers=2, vocab_size=100, max_position_embeddings=16, bos_token_id=1, eos_token_id=2
)
# google/siglip2-so400m-patch16-naflex's public config.json (vision and text towers), written out: no download.
SO400M_TOWER = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_attention_heads=16,
    num_hidden_layers=27,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    attention_dropout=0.0,
)
SO400M_VISION = dict(**SO400M_TOWER, num_channels=3, patch_size=16, num_patches=256)
SO400M_TEXT = dict(**SO400M_TOWER, vocab_size=256000, max_position_embeddings=64, projection_size=1152)
NEW_MODULES = [
    "gen_vit.encoder.temporal_fold",
    "gen_vit.norm",
    "gen_vit.bottleneck",
    "sem_vit.latent_proj",
    "decoder",
    "decompressor",
]
SMALL = {"latent_channels": 8, "image_teacher_hidden_size": 24, "video_teacher_hidden_size": 20}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A tiny full Siglip2Model folder and a tiny Siglip2VisionModel folder (4 layers, width 32, patch 4)."""
    root = tmp_path_factory.mktemp("siglip2")
    torch.manual_seed(0)
    Siglip2Model(Siglip2Config(text_config=TINY_TEXT, vision_config=TINY_VISION)).save_pretrained(root / "full")
    Siglip2VisionModel(Siglip2VisionConfig(**TINY_VISION)).save_pretrained(root / "vision")
    return root


@pytest.fixture(scope="module")
def converted(sources):
    """The full Siglip2Model converted with default settings: (folder, report)."""
    output = sources / "converted"
    return output, converter.convert(sources / "full", output, SMALL)


def siglip_vision(folder):
    model = Siglip2Model.from_pretrained(folder).vision_model
    return model.eval()


def split_layers(model):
    return [*model.gen_vit.encoder.layers, *model.sem_vit.encoder.layers]


@torch.no_grad()
def test_image_embeds_exactly_as_siglip2(converted, sources):
    folder, _ = converted
    model, siglip = HydraXTokModel.from_pretrained(folder).eval(), siglip_vision(sources / "full")
    image = torch.rand(2, 3, 3 * 4, 5 * 4) * 2 - 1  # 3×5 patches: positions interpolated from the 4×4 grid
    embedded = model.encode(image, output_hidden_states=True).hidden_states[0][:, 0]
    patches = torch.stack([convert_image_to_patches(single, 4) for single in image])  # SigLIP 2's processor order
    torch.testing.assert_close(embedded, siglip.embeddings(patches, torch.tensor([[3, 5], [3, 5]])))
    tubelet = model.gen_vit.patch_embedding.weight.view(32, 2, -1)
    assert torch.equal(tubelet[:, 1], siglip.embeddings.patch_embedding.weight), "the anchor's slot is SigLIP 2's"
    assert not tubelet[:, 0].any(), "the zero-padding frame's slot is zero"


@torch.no_grad()
def test_copied_layers_equal_the_source_weights_and_outputs(converted, sources):
    folder, _ = converted
    model, siglip = HydraXTokModel.from_pretrained(folder).eval(), siglip_vision(sources / "full")
    hidden = torch.randn(2, 7, 32)
    for layer, source_layer in zip(split_layers(model), siglip.encoder.layers, strict=True):
        source_state = source_layer.state_dict()
        assert source_state.keys() == layer.state_dict().keys()
        assert all(torch.equal(tensor, source_state[name]) for name, tensor in layer.state_dict().items())
        torch.testing.assert_close(layer(hidden[:, None])[0][:, 0], source_layer(hidden, None))
    assert torch.equal(model.sem_vit.post_layernorm.weight, siglip.post_layernorm.weight)


def test_gen_and_sem_split_follows_the_default_proportion(converted):
    folder, report = converted
    config = HydraXTokModel.config_class.from_pretrained(folder)
    assert (config.num_gen_layers, config.gen_fold_layer, config.num_sem_layers) == (2, 1, 2)
    assert (config.num_decoder_layers, config.decoder_unfold_layer) == (4, 2)
    assert report["mapping"]["vision_model.encoder.layers.1.self_attn.q_proj.weight"] == (
        "gen_vit.encoder.layers.1.self_attn.q_proj.weight"
    )
    assert report["mapping"]["vision_model.encoder.layers.2.mlp.fc1.bias"] == "sem_vit.encoder.layers.0.mlp.fc1.bias"
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size, config.patch_size) == (
        32,
        2,
        64,
        4,
    )
    assert config.position_embedding_size == 4 and config.hidden_act == "gelu_pytorch_tanh"


def test_report_accounts_for_every_tensor(converted, sources):
    folder, report = converted
    source_keys = set(Siglip2Model.from_pretrained(sources / "full").state_dict())
    assert set(report["mapping"]) | set(report["dropped"]) == source_keys
    assert not set(report["mapping"]) & set(report["dropped"])
    text = {key for key in source_keys if key.startswith("text_model.")}
    groups = {group["rule"]: group for group in report["dropped_groups"]}
    assert groups[r"text_model\..*"]["tensors"] == len(text) and "text tower" in groups[r"text_model\..*"]["reason"]
    assert {key for key in report["dropped"] if "head." in key and not key.startswith("text_model.")}
    assert report["new_modules"] == NEW_MODULES
    assert report["source_tensors"] == len(source_keys)
    assert json.loads((folder / "conversion_report.json").read_text()) == report
    assert any("embeds" in check or "embedding" in check for check in report["checks"])
    assert json.loads((folder / "config.json").read_text())["auto_map"]["AutoModel"].startswith("modeling_hydrax_tok")


def test_a_dropped_position_embedding_is_reported_so(sources):
    output = sources / "no-positions"
    report = converter.convert(sources / "vision", output, {**SMALL, "use_abs_pos_embed": False})
    assert report["position_embedding"]["dropped"] and not report["position_embedding"]["resized"]
    assert "position embedding: 4² grid dropped (use_abs_pos_embed=False)" in converter.format_report(report, output)
    assert not hasattr(HydraXTokModel.from_pretrained(output).gen_vit, "position_embedding")


def test_a_one_layer_gen_vit_folds_first_and_converts(sources):
    """`num_gen_layers` 1 puts the fold at 0 (before SigLIP 2's layer 0, the default proportion 6 / 13 rounded): the
    embedding check reads the Gen-ViT's input, not the folded input of its first block, and passes."""
    output = sources / "one-gen-layer"
    report = converter.convert(sources / "vision", output, {**SMALL, "num_gen_layers": 1})
    config = HydraXTokModel.from_pretrained(output).config
    assert (config.num_gen_layers, config.gen_fold_layer, config.num_sem_layers) == (1, 0, 3)
    assert any(
        check.startswith("patch + position embedding of a 4×4-patch image equals") for check in report["checks"]
    )


@torch.no_grad()
def test_overrides_resize_positions_and_rope_off_matches_siglip2_end_to_end(sources):
    output = sources / "resized"
    overrides = {**SMALL, "position_embedding_size": 6, "use_rope": False, "temporal_compression": "single"}
    report = converter.convert(sources / "vision", output, overrides)
    assert report["position_embedding"]["resized"] and report["source_architecture"] == "Siglip2VisionModel"
    model, siglip = (
        HydraXTokModel.from_pretrained(output).eval(),
        Siglip2VisionModel.from_pretrained(sources / "vision"),
    )
    grid = siglip.embeddings.position_embedding.weight.view(4, 4, -1)
    expected_grid = Siglip2VisionEmbeddings.resize_positional_embeddings(grid, torch.tensor([[6, 6]]), 36)[0]
    assert torch.equal(model.gen_vit.position_embedding.position_embedding.weight, expected_grid)
    assert model.gen_vit.patch_embedding.weight.shape == (32, 4 * 4 * 4 * 3), "4-frame tubelets"
    # Without RoPE or a second temporal fold, the Gen-ViT is SigLIP 2's first layers on a 6×6-patch image.
    image = torch.rand(1, 3, 24, 24) * 2 - 1
    ours = model.encode(image, output_hidden_states=True).hidden_states
    theirs = siglip(
        convert_image_to_patches(image[0], 4)[None],
        torch.ones(1, 36, dtype=torch.long),
        torch.tensor([[6, 6]]),
        output_hidden_states=True,
    ).hidden_states
    assert len(ours) == model.config.num_gen_layers + 1 == 3
    for index in range(len(ours)):
        torch.testing.assert_close(ours[index][:, 0], theirs[index])


def test_existing_output_needs_force(converted, sources, tmp_path, capsys):
    folder = tmp_path / "converted"
    shutil.copytree(converted[0], folder)
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        converter.convert(sources / "full", folder, SMALL)
    with pytest.raises(SystemExit):
        converter.main(["--siglip", str(sources / "vision"), "--output", str(folder)])
    assert "already exists; pass --force" in capsys.readouterr().err
    assert (folder / "model.safetensors").read_bytes() == before
    converter.main(
        ["--siglip", str(sources / "vision"), "--output", str(folder), "--force", "--config", json.dumps(SMALL)]
    )
    assert "Siglip2VisionModel" in capsys.readouterr().out
    assert json.loads((folder / "conversion_report.json").read_text())["source_architecture"] == "Siglip2VisionModel"
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".")], "no staging folder left"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hidden_size": 64}, "cannot change what the SigLIP 2 weights fix"),
        ({"num_gen_layers": 3, "num_sem_layers": 3}, "must equal SigLIP 2's 4 layers"),
        ({"no_such_field": 1}, "not Hydra-XTok config fields"),
    ],
)
def test_bad_overrides_are_refused(overrides, message):
    source = Siglip2VisionConfig(**TINY_VISION)
    with pytest.raises(ValueError, match=message):
        converter.derive_config(source, overrides)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"num_decoder_layers": 8}, {"num_decoder_layers": 8, "decoder_unfold_layer": 4}),
        ({"num_gen_layers": 4}, {"num_gen_layers": 4, "gen_fold_layer": 2, "num_sem_layers": 23}),
        ({"num_decoder_layers": 8, "decoder_unfold_layer": 7}, {"num_decoder_layers": 8, "decoder_unfold_layer": 7}),
    ],
)
def test_a_layer_count_override_moves_its_fold_to_the_same_proportion(overrides, expected):
    """27 layers split as the paper's (13 Gen-ViT folding after 6, a 27-layer decoder unfolding after 14); a new
    depth keeps that proportion unless the fold layer is given too."""
    config = converter.derive_config(Siglip2VisionConfig(**SO400M_VISION), overrides)
    assert {name: getattr(config, name) for name in expected} == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        ('{"use_rope": "yes"}', "Field 'use_rope' expected bool, got str"),
        ('{"decoder_unfold_layer": 9}', "`decoder_unfold_layer` (9) must lie in [0, num_decoder_layers=4]"),
        ('{"num_gen_layers": "3"}', "--config: num_gen_layers must be an integer, got '3'"),
        ('{"num_gen_layers": 0}', "--config: num_gen_layers must be 1 to 3 (SigLIP 2's 4 layers"),  # was IndexError
    ],
)
def test_values_the_config_rejects_are_command_line_errors(sources, tmp_path, capsys, overrides, message):
    with pytest.raises(SystemExit) as exit_info:
        converter.main(["--siglip", str(sources / "vision"), "--output", str(tmp_path / "out"), "--config", overrides])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and "error: --config" in error and message in error
    assert not (tmp_path / "out").exists()


def test_the_card_names_a_hub_source_and_never_a_local_path(converted, sources, tmp_path, monkeypatch):
    """The tokenizer's card records SigLIP 2's Hub id as `base_model`, which build_hydrax carries into the Hydra-X
    card next to the LLM's id; a local source folder names none."""
    local = ModelCard.load(converted[0] / "README.md")
    assert local.data.base_model is None and str(sources) not in local.content
    assert "Not trained yet" in local.text and "decompressor" in local.text
    assert converted[1]["added_files"] == ["README.md"]
    snapshot = tmp_path / "hub" / "models--me--siglip2-tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(sources / "vision", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    converter.convert("me/siglip2-tiny", tmp_path / "from-hub", SMALL)
    assert ModelCard.load(tmp_path / "from-hub" / "README.md").data.base_model == ["me/siglip2-tiny"]
    assert default_base_models("Qwen/Qwen2.5-7B-Instruct", tmp_path / "from-hub") == [
        "Qwen/Qwen2.5-7B-Instruct",
        "me/siglip2-tiny",
    ]


def test_an_unmapped_source_tensor_is_an_error():
    with torch.device("meta"):
        source = Siglip2VisionModel(Siglip2VisionConfig(**TINY_VISION))
    state = {**source.state_dict(), "embeddings.extra_scale": torch.empty(1, device="meta")}
    with pytest.raises(CheckpointImportError, match=r"match no rule.*embeddings\.extra_scale"):
        converter.plan_conversion(source.config, state)


def test_a_failed_equivalence_check_writes_nothing(sources, monkeypatch):
    def first_slot(temporal_patch_size):  # the SigLIP 2 weights in the padding frame's slot: wrong on purpose
        def wrong_slot(weight):
            return torch.cat([weight] + [torch.zeros_like(weight)] * (temporal_patch_size - 1), dim=1)

        return wrong_slot

    monkeypatch.setattr(converter, "tubelet_patch_embedding", first_slot)
    output = sources / "wrong"
    with pytest.raises(CheckpointImportError, match="Check failed: the patch \\+ position embedding"):
        converter.convert(sources / "vision", output, SMALL)
    assert not output.exists() and not list(sources.glob(".wrong-*"))


def test_truncated_shard_is_named(sources, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((sources / "vision" / "config.json").read_bytes())
    (broken / "model.safetensors").write_bytes((sources / "vision" / "model.safetensors").read_bytes()[:-500])
    with pytest.raises(SystemExit):
        converter.main(["--siglip", str(broken), "--output", str(tmp_path / "out")])
    assert f"{broken / 'model.safetensors'} is not a readable safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (broken / "model.safetensors").unlink()  # no weights (a missing shard reads the same): was a raw traceback
    with pytest.raises(SystemExit):
        converter.main(["--siglip", str(broken), "--output", str(tmp_path / "out")])
    assert f"--siglip {broken}: its weights cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "config, message",
    [
        (
            Qwen2Config(vocab_size=64, architectures=["Qwen2ForCausalLM"]),
            "holds a 'qwen2' checkpoint (Qwen2ForCausalLM)",
        ),
        (CLIPConfig(), "holds a 'clip' checkpoint"),
    ],
)
def test_wrong_architecture_is_named(config, message, tmp_path, capsys):
    config.save_pretrained(tmp_path / "source")
    with pytest.raises(SystemExit):
        converter.main(["--siglip", str(tmp_path / "source"), "--output", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert message in error and "not SigLIP 2" in error


@pytest.mark.parametrize(
    "siglip, message",
    [
        ("{tmp}/no/such/folder", "--siglip {tmp}/no/such/folder: no such folder; pass a SigLIP 2 checkpoint folder"),
        ("{tmp}", "--siglip {tmp}: a folder without config.json"),
    ],
)
def test_missing_source_folder_stops_up_front(siglip, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        converter.main(["--siglip", siglip.format(tmp=tmp_path), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err


def test_real_size_plan_matches_the_hydrax_7b_tokenizer():
    """so400m-patch16-naflex → Hydra-XTok, planned on the meta device (no weights): the mapped part is the 7B preset's
    tokenizer tensor for tensor, and every SigLIP 2 tensor is mapped or deliberately dropped."""
    with torch.device("meta"):
        source = Siglip2Model(Siglip2Config(text_config=SO400M_TEXT, vision_config=SO400M_VISION))
    state = source.state_dict()
    config, plan = converter.plan_conversion(source.config, state)
    preset = HydraXConfig.from_preset("hydrax-7b").vision_config
    with torch.device("meta"):
        reference = HydraXTokModel(preset).state_dict()
    assert set(plan.sources.values()) | set(plan.dropped) == set(state) and not plan.unmapped
    assert len(plan.sources) == 2 + 1 + 27 * 16 + 2, "patch embedding, positions, 27 layers, post-layernorm"
    for target, shape in plan.shapes.items():
        assert reference[target].shape == shape and reference[target].dtype == torch.float32, target
    assert plan.shapes["gen_vit.patch_embedding.weight"] == (1152, 2 * 16 * 16 * 3)
    assert plan.sources["sem_vit.encoder.layers.13.mlp.fc2.weight"] == "vision_model.encoder.layers.26.mlp.fc2.weight"
    assert plan.sources["gen_vit.encoder.layers.12.self_attn.out_proj.bias"] == (
        "vision_model.encoder.layers.12.self_attn.out_proj.bias"
    )
    fields = ("hidden_size", "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps", "patch_size")
    fields += ("num_gen_layers", "gen_fold_layer", "num_sem_layers", "num_decoder_layers", "decoder_unfold_layer")
    assert {name: getattr(config, name) for name in fields} == {name: getattr(preset, name) for name in fields}
    assert config.position_embedding_size == preset.position_embedding_size == 16
    assert not {target for target in plan.new if not target.startswith("decompressor.")} - set(reference)
