"""Details of conversion and evaluation that the end-to-end tests cannot tell apart: the 1.5B preset's sizes, the
card's depths, the SigLIP 2 converter's copied fields and layer check, the importer's whole-key rules, value check and
counts, the build's dtype and logits checks, SigLIP text padding, CLIP-score clamping, the edit scores' references and
the byte-normalised accuracy."""

import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script, tiny_clip, tiny_dinov2

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "conversion"))
sys.path.insert(0, str(ROOT / "evaluation"))

import convert_siglip2_to_hydrax_tok as converter  # noqa: E402
from checkpoint_importer import CheckpointImportError, check_reloaded, plan_import  # noqa: E402
from model_card_hydrax import build_model_card  # noqa: E402


# ------------------------------------------------------------------------------------------------- presets
def test_hydrax_1_5b_preset_is_qwen2_5_1_5b():
    """Qwen2.5-1.5B: 1,543,714,304 parameters (1.54B, 1.31B without the tied embedding), embeddings tied."""
    config = HydraXConfig.from_preset("hydrax-1.5b")
    with torch.device("meta"):
        model = HydraXForConditionalGeneration(config)
    llm = sum(p.numel() for p in model.model.language_model.parameters())
    assert config.text_config.tie_word_embeddings
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert llm == 1_543_714_304


# ------------------------------------------------------------------------------------------------- model card
def test_card_architecture_row_names_gen_and_sem_depths():
    card = build_model_card("me/hydrax-7b", HydraXConfig.from_preset("hydrax-7b"), "trained")
    vision = HydraXConfig.from_preset("hydrax-7b").vision_config
    assert (vision.num_gen_layers, vision.num_sem_layers) == (13, 14)
    assert "Gen-ViT 13 + Sem-ViT 14 layers" in card.text


# ------------------------------------------------------------------------------------------------- SigLIP 2 conversion
def test_derived_config_copies_the_sources_layer_norm_eps_and_activation():
    from transformers import Siglip2VisionConfig

    source = Siglip2VisionConfig(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        num_hidden_layers=4,
        patch_size=4,
        num_patches=16,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
    )
    config = converter.derive_config(source, {"latent_channels": 8})
    assert config.layer_norm_eps == 1e-5 and config.hidden_act == "gelu"


def test_a_misplaced_layer_fails_the_layer_check(tmp_path, monkeypatch):
    """Two Sem-ViT layers swapped: each copied tensor has a home and the right shape, only the layer outputs tell."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    torch.manual_seed(0)
    vision = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=4, patch_size=4)
    Siglip2VisionModel(Siglip2VisionConfig(**vision, num_patches=16)).save_pretrained(tmp_path / "vision")
    rules = converter.conversion_rules

    def swapped(config, num_layers):
        table = rules(config, num_layers)
        swap = {
            "sem_vit.encoder.layers.0.": "sem_vit.encoder.layers.1.",
            "sem_vit.encoder.layers.1.": "sem_vit.encoder.layers.0.",
        }
        out = []
        for pattern, replacement in table:
            for old, new in swap.items():
                if replacement and replacement.startswith(old):
                    replacement = new + replacement[len(old) :]
                    break
            out.append((pattern, replacement))
        return out

    monkeypatch.setattr(converter, "conversion_rules", swapped)
    with pytest.raises(CheckpointImportError, match=r"Check failed: sem_vit\.encoder\.layers\.0"):
        converter.convert(tmp_path / "vision", tmp_path / "out", {"latent_channels": 8})
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------- importer
def test_reload_check_compares_values_not_only_shapes():
    written = torch.nn.Linear(3, 2)
    reloaded = torch.nn.Linear(3, 2)
    reloaded.load_state_dict(written.state_dict())
    check_reloaded(written, reloaded)
    with torch.no_grad():
        reloaded.weight[0, 0] += 1
    with pytest.raises(CheckpointImportError, match="'weight'"):
        check_reloaded(written, reloaded)


def test_summary_counts_unmapped_source_tensors():
    source = {"a": torch.zeros(2), "b": torch.zeros(2), "stray": torch.zeros(1)}
    target = {"x": torch.zeros(2), "y": torch.zeros(2)}
    plan = plan_import(source, target, [("a", "x"), ("b", "y")])
    assert plan.unmapped == ["stray"]
    assert plan.summary()["source_tensors"] == 3


# ------------------------------------------------------------------------------------------------- metrics
def test_siglip_text_features_are_padded_to_64_tokens():
    """SigLIP pools its text tower's last position, so its text must be padded as in training (to 64 tokens)."""
    import metrics_hydrax
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Siglip2Config, Siglip2Model

    words = ["<pad>", "<unk>", "a", "cat", "on", "mat", "two", "dogs"]
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")

    class TextOnlyProcessor:
        def __call__(self, text, **kwargs):
            return tokenizer(text, **kwargs)

    torch.manual_seed(0)
    tower = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=1)
    model = Siglip2Model(
        Siglip2Config(text_config=dict(tower, vocab_size=len(words), max_position_embeddings=64), vision_config=tower)
    ).eval()
    scorer = metrics_hydrax.HydraXClipScore(model, TextOnlyProcessor())
    texts = ["a cat on a mat", "two dogs"]
    with torch.no_grad():
        padded = model.get_text_features(**tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt"))
        longest = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
    padded, longest = (torch.nn.functional.normalize(metrics_hydrax._pooled(x), dim=-1) for x in (padded, longest))
    assert not torch.allclose(padded, longest, atol=1e-3), "the test must tell the paddings apart"
    torch.testing.assert_close(scorer.text_features(texts), padded)


# ------------------------------------------------------------------------------------------------- generation eval
@pytest.fixture(scope="module")
def edit_models(tmp_path_factory):
    from metrics_hydrax import HydraXClipScore, HydraXImageFeatures

    folder = tmp_path_factory.mktemp("edit-models")
    return (
        HydraXClipScore.from_pretrained(tiny_clip(folder / "clip")),
        HydraXImageFeatures.from_pretrained(tiny_dinov2(folder / "dinov2")),
    )


def test_edit_image_scores_compare_each_output_with_its_own_reference(edit_models):
    """clip_i / dino against the target (source_* against the source) on each metric's own model, with outputs,
    sources and targets all different (a self-comparison gives 1 whatever is compared)."""
    from metrics_hydrax import cosine_similarity

    evaluation = load_script(ROOT / "evaluation" / "evaluate_generation.py")
    clip, features = edit_models
    generator = torch.Generator().manual_seed(0)
    pixels, sources, targets = (torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1 for _ in range(3))
    scores = evaluation.score_edits(
        pixels, ["a", "b", "c"], sources, [targets[0], targets[1], None], [None, None, None], clip, features
    )
    for index in (0, 1):
        expected_clip = cosine_similarity(
            clip.image_features(pixels[index : index + 1]), clip.image_features(targets[index : index + 1])
        )
        expected_dino = cosine_similarity(features(pixels[index : index + 1]), features(targets[index : index + 1]))
        assert scores[index]["clip_i"] == pytest.approx(float(expected_clip[0]), abs=1e-5)
        assert scores[index]["dino"] == pytest.approx(float(expected_dino[0]), abs=1e-5)
    expected_clip = cosine_similarity(clip.image_features(pixels[2:]), clip.image_features(sources[2:]))
    expected_dino = cosine_similarity(features(pixels[2:]), features(sources[2:]))
    assert scores[2]["source_clip_i"] == pytest.approx(float(expected_clip[0]), abs=1e-5)
    assert scores[2]["source_dino"] == pytest.approx(float(expected_dino[0]), abs=1e-5)


# ------------------------------------------------------------------------------------------------- understanding eval
def test_clip_score_clamps_negative_cosines_at_zero(tmp_path, monkeypatch):
    """Hessel et al.'s CLIP score, as torchmetrics defines it: 100 · max(cos, 0); a negative cosine scores 0."""
    from metrics_hydrax import HydraXClipScore

    scorer = HydraXClipScore.from_pretrained(tiny_clip(tmp_path / "clip"))
    monkeypatch.setattr(scorer, "cosine", lambda images, texts: torch.tensor([-0.25, 0.5]))
    assert scorer.score(torch.zeros(2, 3, 32, 32), ["a", "b"]).tolist() == [0.0, 50.0]


def test_a_rule_must_match_the_whole_key_not_only_its_start():
    """`out\\.w` must not take `out.w_scale`: a rule matches the whole key (re.fullmatch), at its end too."""
    target = {"head.weight": torch.zeros(2, 3)}
    plan = plan_import({"out.w_scale": torch.zeros(2, 3)}, target, [(r"out\.w", "head.weight")])
    assert plan.unmapped == ["out.w_scale"] and not plan.sources
    plan = plan_import({"out.w": torch.zeros(2, 3)}, target, [(r"out\.w", "head.weight")])
    assert plan.sources == {"head.weight": "out.w"}


def test_saved_tensor_check_catches_a_wrong_dtype(checkpoint):
    """A checkpoint written in float32 is not the bfloat16 one that was asked for."""
    from build_hydrax import check_saved_tensors

    config = HydraXConfig.from_pretrained(checkpoint)
    assert check_saved_tensors(checkpoint, config, torch.float32) > 0
    with pytest.raises(ValueError, match=r"F32 .* expected BF16"):
        check_saved_tensors(checkpoint, config, torch.bfloat16)


def test_text_logits_beyond_rounding_stop_the_build(tmp_path, monkeypatch):
    """verify_folder compares the built model's text-only logits with the source Qwen2's: a source whose logits
    differ (here its LM head nudged after loading) stops the build and leaves no folder."""
    import build_hydrax
    from test_build_from_pretrained import write_sources
    from transformers import Qwen2ForCausalLM

    sources = write_sources(tmp_path / "sources")

    class NudgedQwen2:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            model = Qwen2ForCausalLM.from_pretrained(*args, **kwargs)
            with torch.no_grad():
                model.lm_head.weight.add_(0.05)
            return model

    monkeypatch.setattr(build_hydrax, "Qwen2ForCausalLM", NudgedQwen2)
    with pytest.raises(ValueError, match="Text-only logits differ from the source Qwen2's"):
        build_hydrax.build_from_pretrained(sources["vision"], sources["llm"], tmp_path / "hydrax")
    assert not (tmp_path / "hydrax").exists()
