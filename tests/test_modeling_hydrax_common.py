"""transformers' common model checks, ported to Hydra-X (CONVENTIONS.md section 2): config round trips, embeddings
resizing and tying, base-model prefixes, `inputs_embeds`, tuple outputs, hidden states and attentions, weights a
checkpoint lacks, buffers after meta-device loading, generation continuation, disk offload and dtypes."""

import copy
import json

import pytest
import torch
from conftest import tiny_hydrax, visual_block
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from safetensors.torch import load_file, save_file
from test_modeling_hydrax import IMAGE_TOKENS, _task_inputs, fixed_noise, image, t2i_ids, understanding_ids
from transformers import AutoModel, GenerationConfig, StaticCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration, HydraXModel
from modeling_hydrax.configuration_hydrax_presets import preset_kwargs
from modeling_hydrax.modeling_hydrax import HydraXAdaLNModulation


@pytest.fixture(scope="module")
def model():
    return tiny_hydrax()


def tied_config() -> HydraXConfig:
    """The tiny preset with Qwen2.5-1.5B's tied embeddings."""
    kwargs = copy.deepcopy(preset_kwargs("tiny"))
    kwargs["text_config"]["tie_word_embeddings"] = True
    return HydraXConfig(**kwargs)


def saved_keys(folder) -> set[str]:
    return set().union(*(load_file(path).keys() for path in folder.glob("*.safetensors")))


def test_config_round_trips_and_strict_validation(model, tmp_path):
    config = model.config
    as_dict = config.to_dict()
    rebuilt = HydraXConfig.from_dict(as_dict)
    assert rebuilt.to_dict() == as_dict
    assert type(rebuilt.text_config).__name__ == "Qwen2Config"
    assert type(rebuilt.vision_config).__name__ == "HydraXTokConfig"
    assert HydraXConfig(**json.loads(config.to_json_string())).to_dict() == as_dict
    config.save_pretrained(tmp_path)
    loaded = HydraXConfig.from_pretrained(tmp_path).to_dict()
    assert loaded.pop("auto_map") == {"AutoConfig": "configuration_hydrax.HydraXConfig"}  # saved with its code
    assert loaded == as_dict
    with pytest.raises(StrictDataclassFieldValidationError):
        HydraXConfig.from_preset("tiny", flow_head_num_layers="3")
    with pytest.raises(StrictDataclassClassValidationError, match="text_dropout_prob"):
        HydraXConfig.from_preset("tiny", text_dropout_prob=1.5)


def test_resize_token_embeddings_keeps_old_rows_and_round_trips(tmp_path):
    model = tiny_hydrax()
    old_embeddings = model.get_input_embeddings().weight.detach().clone()
    old_head = model.lm_head.weight.detach().clone()
    vocab = model.config.text_config.vocab_size
    model.resize_token_embeddings(vocab + 10)
    assert model.config.text_config.vocab_size == vocab + 10
    assert model.get_input_embeddings().weight.shape[0] == model.lm_head.weight.shape[0] == vocab + 10
    assert torch.equal(model.get_input_embeddings().weight[:vocab], old_embeddings)
    assert torch.equal(model.lm_head.weight[:vocab], old_head)
    ids, pixels = understanding_ids(model.config), image()
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels).logits
    assert logits.shape[-1] == vocab + 10
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.text_config.vocab_size == vocab + 10
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, pixel_values=pixels).logits, logits)
    model.resize_token_embeddings(vocab + 10, pad_to_multiple_of=64)
    assert model.lm_head.weight.shape[0] % 64 == 0


def test_tied_embeddings_share_storage_save_once_and_reload_tied(tmp_path):
    tied = HydraXForConditionalGeneration(tied_config())
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    tied.save_pretrained(tmp_path)
    assert "lm_head.weight" not in saved_keys(tmp_path)
    loaded = HydraXForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight
    assert torch.equal(loaded.lm_head.weight, tied.lm_head.weight)
    tied.resize_token_embeddings(tied.config.text_config.vocab_size + 3)
    assert tied.lm_head.weight is tied.get_input_embeddings().weight, "resizing untied the head"
    untied = tiny_hydrax()
    assert untied.lm_head.weight.data_ptr() != untied.get_input_embeddings().weight.data_ptr()
    untied.save_pretrained(tmp_path / "untied")
    assert "lm_head.weight" in saved_keys(tmp_path / "untied")


def test_base_model_and_head_model_load_each_others_checkpoints(model, tmp_path):
    model.save_pretrained(tmp_path / "head")
    base = HydraXModel.from_pretrained(tmp_path / "head")
    reference = model.model.state_dict()
    assert base.state_dict().keys() == reference.keys()
    for name, tensor in base.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    base.save_pretrained(tmp_path / "base")
    head, info = HydraXForConditionalGeneration.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert info["missing_keys"] == {"lm_head.weight"}
    for name, tensor in head.model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_inputs_embeds_match_input_ids(model):
    config = model.config
    embed = model.get_input_embeddings()
    with torch.no_grad():
        ids, pixels = understanding_ids(config), image()
        by_ids = model(input_ids=ids, pixel_values=pixels).logits
        by_embeds = model(inputs_embeds=embed(ids), pixel_values=pixels).logits
        assert torch.allclose(by_ids, by_embeds, atol=1e-6)
        assert torch.equal(model.model.placeholder_ids(embed(ids)) >= 0, torch.isin(ids, _vision_ids(config)))

        t, noise = fixed_noise(model, (1, 8, 1, 2, 2), 1)
        target = image()
        kwargs = dict(target_pixel_values=target, timesteps=t, noise=noise, labels=t2i_ids(config))
        by_ids = model(input_ids=t2i_ids(config), **kwargs)
        by_embeds = model(inputs_embeds=embed(t2i_ids(config)), **kwargs)
        assert torch.allclose(by_ids.velocity, by_embeds.velocity, atol=1e-6)
        assert torch.allclose(by_ids.loss, by_embeds.loss, atol=1e-6)

        base_output = model.model(inputs_embeds=embed(ids))
        assert base_output.last_hidden_state.shape == (1, ids.shape[1], config.text_config.hidden_size)

    greedy = dict(pixel_values=pixels, max_new_tokens=4, do_sample=False)
    from_ids = model.generate(input_ids=ids, **greedy)
    from_embeds = model.generate(inputs_embeds=embed(ids), **greedy)
    assert torch.equal(from_embeds, from_ids[:, ids.shape[1] :])  # only the new tokens, as for any LLM

    prompt = torch.tensor([[5, 6, 7, 8]])

    with pytest.raises(ValueError, match="input_ids.*inputs_embeds"):
        model(pixel_values=image())
    alike = tiny_hydrax()
    with torch.no_grad():  # as in a text-only checkpoint whose vision tokens were never trained
        alike.get_input_embeddings().weight[config.video_token_id] = embed.weight[config.image_token_id]
    with pytest.raises(ValueError, match=f"Tokens \\[\\({config.image_token_id}, {config.video_token_id}\\)\\] have"):
        alike(inputs_embeds=alike.get_input_embeddings()(ids))
    with pytest.raises(ValueError, match=r"\(1, 3\).*same batch size and length"):
        model(input_ids=prompt[:, :3], inputs_embeds=embed(prompt))


def _vision_ids(config) -> torch.Tensor:
    return torch.tensor(
        [config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id]
    )


def test_text_dropout_with_inputs_embeds_equals_dropout_of_input_ids():
    model = tiny_hydrax(text_dropout_prob=0.5, source_dropout_prob=0.0).train()
    ids = t2i_ids(model.config).repeat(8, 1)
    t, noise = fixed_noise(model, (8, 8, 1, 2, 2), 8)
    target = image(batch=8)
    kwargs = dict(target_pixel_values=target, timesteps=t, noise=noise, labels=ids)
    torch.manual_seed(3)
    by_ids = model(input_ids=ids, **kwargs)
    torch.manual_seed(3)
    by_embeds = model(inputs_embeds=model.get_input_embeddings()(ids), **kwargs)
    assert torch.allclose(by_ids.velocity, by_embeds.velocity, atol=1e-6)
    assert torch.allclose(by_ids.loss, by_embeds.loss, atol=1e-6)
    torch.manual_seed(3)
    kept = tiny_hydrax(text_dropout_prob=0.0, source_dropout_prob=0.0).train()(input_ids=ids, **kwargs)
    assert not torch.allclose(kept.velocity, by_ids.velocity, atol=1e-4), "seed 3 dropped no prompt"


def test_return_dict_false_gives_the_output_tuple(model):
    inputs = _task_inputs(model.config, "generation")
    t, noise = fixed_noise(model, (1, 8, 1, 2, 2), 1)
    with torch.no_grad():
        as_dict = model(**inputs, timesteps=t, noise=noise)
        as_tuple = model(**inputs, timesteps=t, noise=noise, return_dict=False)
        base = model.model(input_ids=understanding_ids(model.config), pixel_values=image(), return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for a, b in zip(as_tuple, as_dict.to_tuple()):
        assert type(a) is type(b) and (not isinstance(a, torch.Tensor) or torch.equal(a, b))
    assert isinstance(base, tuple) and base[0].shape[:2] == understanding_ids(model.config).shape

    # `config.return_dict=False` (how transformers' old scripts ask for tuples) changes only what the caller gets
    tuples = tiny_hydrax(return_dict=False)
    with torch.no_grad():
        out = tuples(**inputs, timesteps=t, noise=noise)
    assert isinstance(out, tuple) and torch.equal(out[0], as_dict.loss)
    ids = understanding_ids(model.config)
    assert tuples.generate(input_ids=ids, pixel_values=image(), max_new_tokens=2).shape == (1, ids.shape[1] + 2)


def test_hidden_states_attentions_and_their_gradients():
    model = tiny_hydrax()
    model.set_attn_implementation({"text_config": "eager"})
    ids = understanding_ids(model.config)
    out = model(input_ids=ids, pixel_values=image(), output_hidden_states=True, output_attentions=True)
    layers, heads = model.config.text_config.num_hidden_layers, model.config.text_config.num_attention_heads
    assert len(out.hidden_states) == layers + 1 and len(out.attentions) == layers
    assert all(h.shape == (1, ids.shape[1], model.config.text_config.hidden_size) for h in out.hidden_states)
    assert all(a.shape == (1, heads, ids.shape[1], ids.shape[1]) for a in out.attentions)
    # the visual block is bidirectional inside itself, everything else causal
    start = ids[0].tolist().index(model.config.vision_start_token_id) + 1
    block = slice(start, start + IMAGE_TOKENS)
    future = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)
    future[block, block] = False
    for weights in out.attentions:
        assert (weights[0, :, block, block] > 0).all() and (weights[0][:, future] == 0).all()
    out.hidden_states[0].retain_grad()
    out.attentions[0].retain_grad()
    out.logits.sum().backward()
    assert out.hidden_states[0].grad is not None and out.hidden_states[0].grad.abs().sum() > 0
    assert out.attentions[0].grad is not None and out.attentions[0].grad.abs().sum() > 0


def test_weights_a_checkpoint_lacks_are_initialised_and_buffers_rebuilt(model, tmp_path):
    model.save_pretrained(tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    weights = load_file(path)
    dropped = {name for name in weights if name.startswith(("model.flow_head.", "model.projector."))}
    save_file({name: t for name, t in weights.items() if name not in dropped}, path, metadata={"format": "pt"})
    loaded, info = HydraXForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == dropped
    fresh = tiny_hydrax()
    for name, param in loaded.named_parameters():
        assert torch.isfinite(param).all(), name
        if name in dropped:  # initialised as a fresh model initialises them, not left as torch.empty's memory
            reference = fresh.get_parameter(name)
            assert param.abs().max() <= 10 * max(reference.abs().max(), 1e-3), name
            assert bool((param == 0).all()) == bool((reference == 0).all()), name
    for module in loaded.modules():
        if isinstance(module, HydraXAdaLNModulation):
            assert not module.weight.any() and not module.bias.any(), "AdaLN-Zero lost on a missing flow head"
    buffers = dict(fresh.named_buffers())
    for name, buffer in loaded.named_buffers():  # non-persistent buffers (rotary tables, ...) after meta init
        assert torch.equal(buffer, buffers[name]), name
    with torch.device("meta"):
        on_meta = HydraXForConditionalGeneration(model.config)
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}


def test_generation_repeats_and_continues_from_its_cache(model):
    ids = understanding_ids(model.config)
    greedy = dict(max_new_tokens=6, do_sample=False)
    first = model.generate(input_ids=ids, pixel_values=image(), **greedy)
    torch.manual_seed(0)
    assert torch.equal(model.generate(input_ids=ids, pixel_values=image(), **greedy), first)
    torch.manual_seed(0)
    part = model.generate(
        input_ids=ids, pixel_values=image(), max_new_tokens=3, do_sample=False, return_dict_in_generate=True
    )
    continued = model.generate(input_ids=part.sequences, cache=part.cache, max_new_tokens=3, do_sample=False)
    assert torch.equal(continued, first)
    sampled = []
    for _ in range(2):
        torch.manual_seed(7)
        sampled.append(model.generate(input_ids=ids, pixel_values=image(), do_sample=True, max_new_tokens=6))
    assert torch.equal(*sampled)


def test_disk_offload_matches_the_model_in_memory(model, tmp_path):
    pytest.importorskip("accelerate")
    model.save_pretrained(tmp_path / "model")
    budget = {"cpu": sum(p.numel() for p in model.parameters()) * 4 // 3, "disk": 10**12}  # ⅔ of fp32 goes to disk
    offloaded = HydraXForConditionalGeneration.from_pretrained(
        tmp_path / "model", device_map="auto", max_memory=budget, offload_folder=tmp_path / "offload"
    ).eval()
    assert "disk" in offloaded.hf_device_map.values()
    assert any(p.device.type == "meta" for p in offloaded.parameters()), "nothing went to disk"
    inputs = _task_inputs(model.config, "generation")
    t, noise = fixed_noise(model, (1, 8, 1, 2, 2), 1)
    with torch.no_grad():
        a = model(**inputs, timesteps=t, noise=noise)
        b = offloaded(**inputs, timesteps=t, noise=noise)
    assert torch.allclose(a.velocity, b.velocity, atol=1e-6) and torch.allclose(a.loss, b.loss, atol=1e-6)


def test_dtype_on_load_reaches_every_submodel(model, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert loaded.config.text_config.dtype == torch.bfloat16 or loaded.dtype == torch.bfloat16
    inputs = _task_inputs(model.config, "editing")
    with torch.no_grad():
        out = loaded(**inputs, logits_to_keep=0)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)


def test_visual_features_follow_transformers_multimodal_outputs(model):
    images = image(batch=2)
    with torch.no_grad():
        out = model.get_image_features(images)
        mixed = model.get_image_features([images[0], torch.rand(3, 48, 32) * 2 - 1])
        videos = model.get_video_features(image(frames=5))
        as_tuple = model.get_image_features(images, return_dict=False)
    hidden, width = model.config.text_config.hidden_size, model.config.vision_config.hidden_size
    assert isinstance(out, BaseModelOutputWithPooling) and len(out.pooler_output) == 2
    assert all(f.shape == (IMAGE_TOKENS, hidden) for f in out.pooler_output)
    assert out.last_hidden_state.shape == (2 * IMAGE_TOKENS, width)
    assert [f.shape[0] for f in mixed.pooler_output] == [4, 6]  # 2×2 and 3×2 latent grids
    assert [f.shape[0] for f in videos.pooler_output] == [2 * IMAGE_TOKENS]  # 1 + 4 frames: 2 latent frames
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.last_hidden_state)

    ids = torch.tensor(
        [[5] + visual_block(model.config, IMAGE_TOKENS) + [6] + visual_block(model.config, IMAGE_TOKENS)]
    )
    with torch.no_grad():
        by_pixels = model(input_ids=ids, pixel_values=images).logits
        by_outputs = model(input_ids=ids, mm_encoder_outputs={"image": out}).logits
    assert torch.equal(by_pixels, by_outputs)
    with pytest.raises(ValueError, match="both image pixels and `mm_encoder_outputs\\['image'\\]`"):
        model(input_ids=ids, pixel_values=images, mm_encoder_outputs={"image": out})


def test_generate_expands_each_samples_images_for_beams_and_sequences(model):
    """`num_return_sequences` / `num_beams` copy each sample's whole group of images (encoded once), not each image:
    two images [A, B] of one sample must become [A, B, A, B], not [A, A, B, B]."""
    config = model.config
    one = torch.tensor([[config.pad_token_id] * 6 + [5] + visual_block(config, IMAGE_TOKENS) + [6, 7]])
    two = torch.tensor([[5] + visual_block(config, IMAGE_TOKENS) + [6] + visual_block(config, IMAGE_TOKENS) + [7]])
    pixels = image(batch=3)
    new = dict(max_new_tokens=4)
    alone = [
        model.generate(input_ids=one[:, 6:], pixel_values=pixels[:1], do_sample=False, **new)[:, -4:],
        model.generate(input_ids=two, pixel_values=pixels[1:], do_sample=False, **new)[:, -4:],
    ]
    batch = torch.cat([one, two])
    copies = model.generate(
        input_ids=batch, attention_mask=(batch != config.pad_token_id).long(), pixel_values=pixels,
        do_sample=True, top_k=1, num_return_sequences=2, **new,
    )[:, -4:]  # fmt: skip
    assert torch.equal(copies, torch.cat([alone[0], alone[0], alone[1], alone[1]]))

    sizes = [torch.rand(3, 32, 32) * 2 - 1, torch.rand(3, 48, 32) * 2 - 1]  # a list: different sizes
    ids = torch.tensor([[5] + visual_block(config, 4) + [6] + visual_block(config, 6) + [7]])
    single = model.generate(input_ids=ids, pixel_values=sizes, do_sample=False, **new)
    listed = model.generate(input_ids=ids, pixel_values=sizes, do_sample=True, top_k=1, num_return_sequences=3, **new)
    assert torch.equal(listed, single.expand(3, -1))

    seen = []
    hook = model.model.projector.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    try:
        model.generate(input_ids=two, pixel_values=pixels[1:], num_beams=3, do_sample=False, **new)
    finally:
        hook.remove()
    assert seen == [2], f"the images were encoded as batches of {seen}, not once"


def test_static_cache_generation_keeps_the_visual_blocks_bidirectional(model):
    """`cache_implementation="static"` (what compiled generation uses): transformers builds its masks in
    `create_masks_for_generate`, which cannot see the visual blocks; Hydra-X keeps building them in `forward`."""
    config = model.config
    padded = torch.tensor([[config.pad_token_id, 5] + visual_block(config, IMAGE_TOKENS) + [6, 7]])
    ids = torch.cat([padded, understanding_ids(config)])
    mask = (ids != config.pad_token_id).long()
    pixels = image(batch=2)
    greedy = dict(pixel_values=pixels, attention_mask=mask, max_new_tokens=5, do_sample=False)
    dynamic = model.generate(input_ids=ids, **greedy)
    static = model.generate(input_ids=ids, cache_implementation="static", **greedy)
    assert torch.equal(static, dynamic)
    cache = StaticCache(config=config.text_config, max_cache_len=32)
    with torch.no_grad():
        cached = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, cache=cache, use_cache=True).logits
        plain = model(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    rows = mask.bool()
    torch.testing.assert_close(cached[rows], plain[rows], atol=1e-5, rtol=1e-5)

    with pytest.raises(ValueError, match="prefill_chunk_size=4 with \\['pixel_values'\\]: chunks would split"):
        model.generate(input_ids=ids[1:], pixel_values=pixels[1:], prefill_chunk_size=4, max_new_tokens=2)
    chunked_config = GenerationConfig(prefill_chunk_size=3, max_new_tokens=2)
    with pytest.raises(ValueError, match="prefill_chunk_size=3 with \\['pixel_values'\\]"):
        model.generate(ids[1:], chunked_config, pixel_values=pixels[1:])  # the config given positionally
    encoded = {"image": model.get_image_features(pixels[1:])}
    with pytest.raises(ValueError, match="prefill_chunk_size=3 with \\['mm_encoder_outputs'\\]"):
        model.generate(input_ids=ids[1:], mm_encoder_outputs=encoded, generation_config=chunked_config)
    text = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    chunked = model.generate(input_ids=text, prefill_chunk_size=3, max_new_tokens=4, do_sample=False)
    assert torch.equal(chunked, model.generate(input_ids=text, max_new_tokens=4, do_sample=False))


def test_transformers_image_text_to_text_pipeline_answers_as_generate(checkpoint):
    """transformers' `pipeline("image-text-to-text")` (how Qwen2.5-VL users often call a VLM) loads a Hydra-X
    checkpoint and answers chat messages with `generate`'s own tokens, one conversation or a batch."""
    from PIL import Image
    from transformers import AutoProcessor, pipeline

    answerer = pipeline("image-text-to-text", model=str(checkpoint))
    assert isinstance(answerer.model, HydraXForConditionalGeneration)
    red, blue = Image.new("RGB", (64, 64), "red"), Image.new("RGB", (96, 64), "blue")

    def chat(picture):
        return [
            {"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": "Colour?"}]}
        ]

    processor = AutoProcessor.from_pretrained(checkpoint)
    answers = []
    for picture in (red, blue):
        inputs = processor.apply_chat_template(
            chat(picture), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        tokens = answerer.model.generate(**inputs, max_new_tokens=5, do_sample=False)[
            0, inputs["input_ids"].shape[1] :
        ]
        expected = processor.decode(tokens, skip_special_tokens=True)
        (answer,) = answerer(text=chat(picture), max_new_tokens=5, do_sample=False)
        assert answer["generated_text"][-1] == {"role": "assistant", "content": expected}
        answers.append(answer)
    batch = answerer(text=[chat(red), chat(blue)], max_new_tokens=5, do_sample=False)
    assert [item for (item,) in batch] == answers
    # batch_size > 1: the pipeline's own collator pads with the saved tokenizer's side (left), prompts of two lengths
    long = [{**message, "content": [*message["content"], {"type": "text", "text": " Describe it in detail."}]}
            for message in chat(red)]  # fmt: skip
    alone = [answerer(text=conversation, max_new_tokens=5, do_sample=False) for conversation in (chat(red), long)]
    together = answerer(text=[chat(red), long], batch_size=2, max_new_tokens=5, do_sample=False)
    assert together == alone
    # the model card's task, `any-to-any`, loads through AutoModelForMultimodalLM and answers the same
    (answer,) = pipeline("any-to-any", model=str(checkpoint))(text=chat(red), max_new_tokens=5, do_sample=False)
    assert answer["generated_text"][-1] == answers[0]["generated_text"][-1]
