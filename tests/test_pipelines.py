"""HydraXPipeline and HydraXEditPipeline on a tiny checkpoint (32² images = 2×2 latent grid), 2 steps, CPU."""

import inspect
import io
import logging
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import accelerate
import numpy as np
import PIL.Image
import pytest
import torch
from conftest import visual_block
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler
from diffusers.utils import logging as diffusers_logging


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipelines import main as bench_main  # noqa: E402
from bench_pipelines import reference_sample  # noqa: E402
from test_remote_code_tok import BLOCK_OUR_PACKAGES  # noqa: E402

from modeling_hydrax import HydraXEditPipeline, HydraXPipeline, pipeline_hydrax, pipeline_hydrax_edit  # noqa: E402


STEPS = 2


@pytest.fixture(scope="module")
def pipe(checkpoint):
    pipe = HydraXPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def edit(pipe):
    edit = HydraXEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    return edit


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def source_image(seed=1, height=32, width=32) -> torch.Tensor:
    return torch.rand(3, height, width, generator=seeded(seed))


def pipeline_warnings(fn) -> str:
    """What the pipelines log while `fn` runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = diffusers_logging.get_logger(pipeline_hydrax.__name__)
    logger.addHandler(handler)
    try:
        fn()
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_call_signatures_follow_diffusers():
    required = {"num_inference_steps", "num_images_per_prompt", "generator", "latents", "output_type", "return_dict"}
    required |= {"prompt", "negative_prompt", "height", "width", "guidance_scale", "callback_on_step_end"}
    required |= {"sigmas", "prompt_embeds", "attention_kwargs", "max_sequence_length"}
    for cls, extra in ((HydraXPipeline, {"num_frames", "image"}), (HydraXEditPipeline, {"image_guidance_scale"})):
        parameters = set(inspect.signature(cls.__call__).parameters)
        assert required | extra <= parameters, (required | extra) - parameters
        assert cls.model_cpu_offload_seq == "model" and cls._callback_tensor_inputs == ["latents"]


def test_text_to_image_output_types(pipe):
    kwargs = dict(height=32, width=48, num_inference_steps=STEPS)
    pil = pipe("a red fox", generator=seeded(), **kwargs).images
    assert len(pil) == 1 and pil[0].size == (48, 32)
    np_images = pipe("a red fox", generator=seeded(), output_type="np", **kwargs).images
    assert np_images.shape == (1, 32, 48, 3) and 0 <= np_images.min() and np_images.max() <= 1
    pt = pipe("a red fox", generator=seeded(), output_type="pt", **kwargs).images
    assert pt.shape == (1, 3, 32, 48)
    np.testing.assert_allclose(np.asarray(pil[0]), (np_images[0] * 255).round(), atol=1)
    latents = pipe("a red fox", generator=seeded(), output_type="latent", **kwargs).images
    assert latents.shape == (1, 8, 1, 2, 3)
    (images,) = pipe("a red fox", generator=seeded(), output_type="pt", return_dict=False, **kwargs)
    torch.testing.assert_close(images, pt)


def test_latent_output_decodes_to_the_default_path(pipe):
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS)
    latents = pipe("a cat", generator=seeded(), output_type="latent", **kwargs).images
    pixels = pipe("a cat", generator=seeded(), output_type="pt", **kwargs).images
    decoded = pipe.model.model.vision_tower.decode(latents).sample.clamp(-1, 1)
    torch.testing.assert_close((decoded[:, :, 0] / 2 + 0.5).clamp(0, 1), pixels)


def test_text_to_video_frames_and_num_frames_rounding(pipe):
    frames = pipe("a fox running", height=32, width=32, num_frames=5, num_inference_steps=STEPS, output_type="np")
    assert frames.images is None and frames.frames.shape == (1, 5, 32, 32, 3)
    pil = pipe("a fox running", height=32, width=32, num_frames=5, num_inference_steps=STEPS).frames
    assert len(pil) == 1 and len(pil[0]) == 5 and pil[0][0].size == (32, 32)
    result = {}
    logged = pipeline_warnings(
        lambda: result.update(
            out=pipe("x", height=32, width=32, num_frames=7, num_inference_steps=STEPS, output_type="pt")
        )
    )
    assert "rounding 7 to 5" in logged and result["out"].frames.shape == (1, 5, 3, 32, 32)
    logged = pipeline_warnings(
        lambda: result.update(
            out=pipe("x", height=32, width=32, num_frames=8, num_inference_steps=1, output_type="pt")
        )
    )
    assert "rounding 8 to 9" in logged and result["out"].frames.shape == (1, 9, 3, 32, 32), "as Wan rounds"


def test_a_video_defaults_to_the_video_processors_frame_budget_and_long_targets_are_logged(pipe, monkeypatch):
    """Videos train at the video processor's sizes (448² per frame by default), images at the image processor's."""
    side = lambda sizes: int(sizes["max_pixels"] ** 0.5) // 16 * 16  # noqa: E731
    video_side, image_side = side(pipe.processor.video_processor.size), side(pipe.processor.image_processor.size)
    assert video_side != image_side
    assert pipe._output_size(None, None, video=True) == (video_side, video_side)
    assert pipe._output_size(None, None) == (image_side, image_side)
    big = source_image(0, 640, 640)  # image-to-video of a large image without a size: the video budget too
    out = pipe("it moves", image=big, num_frames=5, num_inference_steps=1, output_type="latent").frames
    assert out.shape[-2:] == (video_side // 16, video_side // 16)
    monkeypatch.setattr(pipe.model.config.text_config, "max_position_embeddings", 16)
    logged = pipeline_warnings(lambda: pipe("x", height=32, width=64, num_inference_steps=1, output_type="latent"))
    assert "and the target (8 latent tokens) take more positions than the LLM's max_position_embeddings=16" in logged


def test_videos_decode_in_chunks_equal_to_the_whole_clip(pipe):
    kwargs = dict(height=32, width=32, num_frames=13, num_inference_steps=STEPS, output_type="pt")
    streamed = pipe("a fox running", generator=seeded(), **kwargs).frames  # 4 latent frames, 2 at a time
    whole = pipe("a fox running", generator=seeded(), decode_chunk_frames=None, **kwargs).frames
    single = pipe("a fox running", generator=seeded(), decode_chunk_frames=1, **kwargs).frames
    assert streamed.shape == (1, 13, 3, 32, 32)
    torch.testing.assert_close(streamed, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(single, whole, atol=1e-5, rtol=0)
    for bad in (0, 1.5, True, "all"):
        with pytest.raises(ValueError, match=f"`decode_chunk_frames` must be an int ≥ 1 .* got {bad!r}"):
            pipe("x", decode_chunk_frames=bad, **kwargs)


def test_videos_decode_in_chunks_when_the_tokenizer_is_configured_to_record_hidden_states(pipe, monkeypatch):
    """A tokenizer config with `output_hidden_states` on made the chunked decode raise after all the steps (naming
    `chunk_frames`, which the caller never set): the pipeline uses only the pixels."""
    kwargs = dict(height=32, width=32, num_frames=13, num_inference_steps=1, output_type="pt")
    expected = pipe("a fox running", generator=seeded(), **kwargs).frames
    monkeypatch.setattr(pipe.model.model.vision_tower.config, "output_hidden_states", True)
    torch.testing.assert_close(pipe("a fox running", generator=seeded(), **kwargs).frames, expected)


def test_a_tokenizer_with_full_attention_decodes_videos_whole(tmp_path):
    """`attention_mode="full"` (the paper's ablation) cannot stream: `"auto"` decodes such a tokenizer's videos whole,
    and an explicit chunk size is refused before any sampling, naming the option."""
    sys.path.insert(0, str(ROOT / "conversion"))
    from build_hydrax import build_checkpoint

    from modeling_hydrax.configuration_hydrax_presets import preset_kwargs

    vision_config = {**preset_kwargs("tiny")["vision_config"], "attention_mode": "full"}
    full = HydraXPipeline.from_pretrained(build_checkpoint("tiny", tmp_path / "full", vision_config=vision_config))
    full.set_progress_bar_config(disable=True)
    kwargs = dict(height=32, width=32, num_frames=5, num_inference_steps=1, output_type="pt")
    assert full("a fox", **kwargs).frames.shape == (1, 5, 3, 32, 32)
    steps = []
    with pytest.raises(ValueError, match="decode_chunk_frames=2 streams the decoder, .* attention_mode='full'"):
        full("a fox", decode_chunk_frames=2, callback_on_step_end=lambda *args: steps.append(1) or {}, **kwargs)
    assert not steps, "the refusal came after sampling"


def test_source_images_are_read_as_the_processor_reads_them(pipe):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (255, 0, 0, 255)  # a red square on transparent black
    grey = np.full((32, 32), 16448, np.uint16)  # 25 % grey in 16 bits
    for image in (PIL.Image.fromarray(rgba, "RGBA"), PIL.Image.fromarray(grey), np.stack([grey] * 3, axis=-1)):
        expected = pipe.processor.image_processor(image, do_resize=False)["pixel_values"]
        torch.testing.assert_close(pipe._preprocess_images(image, 32, 32, 1), expected, atol=1e-6, rtol=0)
    assert float(pipe._preprocess_images(PIL.Image.fromarray(rgba, "RGBA"), 32, 32, 1)[0, :, 0, 0].min()) == 1.0


def test_image_to_video_first_frame_is_the_tokenizer_reconstruction(pipe):
    image = source_image()
    frames = pipe("it moves", image=image, num_frames=9, num_inference_steps=STEPS, output_type="pt").frames
    assert frames.shape == (1, 9, 3, 32, 32)
    tokenizer = pipe.model.model.vision_tower
    with torch.no_grad():
        reconstruction = tokenizer.decode(tokenizer.encode(image[None] * 2 - 1).latents).sample.clamp(-1, 1)
    torch.testing.assert_close(frames[0, 0], (reconstruction[0, :, 0] / 2 + 0.5).clamp(0, 1), atol=1e-5, rtol=0)
    assert not torch.allclose(frames[0, 1], frames[0, 0], atol=1e-3)


def test_image_to_video_callbacks_see_the_clean_anchor(pipe):
    image, anchors = source_image(), []

    def callback(pipeline, step, timestep, callback_kwargs):
        anchors.append(callback_kwargs["latents"][:, :, :1].clone())
        return {}

    pipe("it moves", image=image, num_frames=5, num_inference_steps=3, callback_on_step_end=callback)
    clean = pipe.model.model.encode_latents(image[None] * 2 - 1).float()
    assert len(anchors) == 3 and all(torch.equal(anchor, clean) for anchor in anchors)

    def zeroing(pipeline, step, timestep, callback_kwargs):  # replaced latents are anchored again
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    out = pipe("it moves", image=image, num_frames=5, num_inference_steps=2, output_type="latent",
               callback_on_step_end=zeroing).frames  # fmt: skip
    assert torch.equal(out[:, :, :1], clean) and not out[:, :, 1:].any()


def test_image_to_video_samples_the_anchor_at_time_zero(pipe, monkeypatch):
    seen = []
    predict = pipe.model.predict_velocity

    def recording(latents, timesteps, prefix):
        seen.append(timesteps.clone())
        return predict(latents, timesteps, prefix)

    monkeypatch.setattr(pipe.model, "predict_velocity", recording)
    kwargs = dict(num_frames=9, num_inference_steps=STEPS, output_type="latent")
    pipe("it moves", image=source_image(), **kwargs)
    assert len(seen) == STEPS
    for times, sigma in zip(seen, pipe.scheduler.sigmas):
        assert times.shape == (1, 3), "one flow time per latent frame"
        assert times[0, 0] == 0 and bool((times[0, 1:] == sigma).all())
    seen.clear()
    pipe("it moves", height=32, width=32, **kwargs)  # text-to-video: one time for the whole target
    assert [tuple(times.shape) for times in seen] == [(1,)] * STEPS


def test_the_schedule_runs_from_noise_to_one_over_n_and_other_schedulers_plug_in(pipe):
    """Flux's and QwenImage's `linspace(1, 1/N, N)` before the resolution shift: no step is spent between σ ≈ 0.002
    and 0. A scheduler that takes no `sigmas` (DPM-Solver++ with flow sigmas) gets only what it takes."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    pipe("a red fox", height=32, width=32, num_inference_steps=2, output_type="latent")
    shift = math.exp(pipe.model.flow_shift_mu(4))
    torch.testing.assert_close(pipe.scheduler.sigmas, torch.tensor([1.0, shift / (shift + 1), 0.0]))
    pipe("a red fox", height=32, width=32, sigmas=torch.tensor([1.0, 0.5], dtype=torch.bfloat16), output_type="latent")
    torch.testing.assert_close(pipe.scheduler.sigmas, torch.tensor([1.0, shift / (shift + 1), 0.0]))
    pipe("a red fox", height=32, width=32, sigmas=[1.0, 0.7, 0.2], output_type="latent")  # not the default's
    given = torch.tensor([1.0, 0.7, 0.2])
    torch.testing.assert_close(
        pipe.scheduler.sigmas, torch.cat([shift * given / (1 + (shift - 1) * given), torch.zeros(1)])
    )
    default = pipe.scheduler
    try:
        flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
        for scheduler in (DPMSolverMultistepScheduler, UniPCMultistepScheduler):  # UniPC: Wan's scheduler
            pipe.scheduler = scheduler.from_config(default.config, **flow)
            images = pipe("a red fox", height=32, width=32, num_inference_steps=3, output_type="pt").images
            assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(default.config, **flow)
        with pytest.raises(ValueError, match="takes no custom `sigmas`"):
            pipe("a red fox", height=32, width=32, sigmas=[1.0, 0.5], output_type="latent")
    finally:
        pipe.scheduler = default


def test_encoded_prompts_give_the_prompts_outputs_and_run_the_llm_once(pipe, monkeypatch):
    """diffusers' encode_prompt contract: `prompt_embeds` from `encode_prompt` give exactly what the prompts give; one
    encoding serves calls of other seeds, sizes, frame counts and image-to-video anchors (the prefix ends before the
    target) without running the prompt through the LLM again."""
    kwargs = dict(num_inference_steps=STEPS, output_type="pt", num_images_per_prompt=2)
    prompts, negative = ["a red fox", "a small blue boat on the lake"], "blurry"
    embeds = pipe.encode_prompt(prompts, negative, guidance_scale=3.0, num_images_per_prompt=2)
    prefixes = []
    prepare = pipe.model.prepare_generation_prefix
    monkeypatch.setattr(
        pipe.model, "prepare_generation_prefix", lambda *a, **k: prefixes.append(1) or prepare(*a, **k)
    )
    calls = [
        dict(height=32, width=32),
        dict(height=48, width=32, num_frames=5),
        dict(image=source_image(), num_frames=5),
    ]
    for call in calls:
        seeds = [seeded(i) for i in range(4)]
        encoded = pipe(prompt_embeds=embeds, guidance_scale=3.0, generator=seeds, **call, **kwargs)
        assert not prefixes, "an encoded prompt ran through the LLM again"
        seeds = [seeded(i) for i in range(4)]
        plain = pipe(prompts, negative_prompt=negative, guidance_scale=3.0, generator=seeds, **call, **kwargs)
        prefixes.clear()
        outputs = (encoded.images, plain.images) if "num_frames" not in call else (encoded.frames, plain.frames)
        torch.testing.assert_close(*outputs, atol=0, rtol=0)
    unguided = pipe.encode_prompt("a fox", guidance_scale=1.0)
    single = dict(guidance_scale=1.0, height=32, width=32, num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(
        pipe(prompt_embeds=unguided, generator=seeded(), **single).images,
        pipe("a fox", generator=seeded(), **single).images,
        atol=0,
        rtol=0,
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (
            dict(prompt="a fox"),
            r"already hold the prompts and negative prompts .* pass \['prompt'\] to `encode_prompt`",
        ),
        (dict(negative_prompt="blurry"), r"already hold the prompts and negative prompts .*\['negative_prompt'\]"),
        (dict(max_sequence_length=8), r"pass \['max_sequence_length'\] to `encode_prompt`, and `prompt_embeds` alone"),
        (
            dict(guidance_scale=1.0),
            r"hold 2 guidance branch\(es\) \(conditional, text-free\), but this call \(guidance_scale=1.0\) runs 1 "
            r"\(conditional\); encode the prompts with this call's guidance scales",
        ),
        (dict(num_images_per_prompt=2), "encoded for num_images_per_prompt=1, but this call asks for 2"),
        (dict(prompt_embeds="a fox"), "must come from `pipe.encode_prompt"),
        (dict(prompt_embeds=None), "Pass `prompt`, or `prompt_embeds` from `pipe.encode_prompt"),
    ],
)
def test_encoded_prompts_that_do_not_suit_the_call_are_refused(pipe, call, message):
    embeds = pipe.encode_prompt("a fox", guidance_scale=4.0)
    with pytest.raises((ValueError, TypeError), match=message):
        pipe(**{"prompt_embeds": embeds, "height": 32, "width": 32, "num_inference_steps": STEPS, **call})
    with pytest.raises(ValueError, match="off at guidance_scale=1.0; raise the guidance scale"):
        pipe.encode_prompt("a fox", negative_prompt="blurry", guidance_scale=1.0)


def test_edit_encoded_prompts_give_the_edits_and_run_the_llm_and_sem_vit_once(edit, monkeypatch):
    """The edit pipeline's encode_prompt: `prompt_embeds` (instructions, sources and the sources' Sem-ViT cache) give
    exactly what image + prompt give, at the encoded size, for other seeds and for other guidance scales that run the
    same branches, without running the LLM again; each branch layout (none, text, text + image) round-trips."""
    sources, prompts = [source_image(1), source_image(2)], ["make it red", "make the sky a deep blue"]
    kwargs = dict(num_inference_steps=STEPS, output_type="pt", num_images_per_prompt=2)
    embeds = edit.encode_prompt(sources, prompts, "blurry", guidance_scale=3.0, num_images_per_prompt=2)
    assert embeds.size == (32, 32) and embeds.num_branches == 3
    prefixes = []
    prepare = edit.model.prepare_generation_prefix
    monkeypatch.setattr(
        edit.model, "prepare_generation_prefix", lambda *a, **k: prefixes.append(1) or prepare(*a, **k)
    )
    for scales in (
        dict(guidance_scale=3.0, image_guidance_scale=1.5),
        dict(guidance_scale=5.0, image_guidance_scale=2),
    ):
        encoded = edit(prompt_embeds=embeds, generator=[seeded(i) for i in range(4)], **scales, **kwargs).images
        assert not prefixes, "an encoded edit ran through the LLM again"
        plain = edit(sources, prompts, "blurry", generator=[seeded(i) for i in range(4)], **scales, **kwargs).images
        prefixes.clear()
        torch.testing.assert_close(encoded, plain, atol=0, rtol=0)
    single = dict(num_inference_steps=STEPS, output_type="pt", height=32, width=48)
    for scales in (
        dict(guidance_scale=1.0, image_guidance_scale=1.0),
        dict(guidance_scale=3.0, image_guidance_scale=1),
    ):
        embeds = edit.encode_prompt(source_image(), "make it red", height=32, width=48, **scales)
        torch.testing.assert_close(
            edit(prompt_embeds=embeds, generator=seeded(), **scales, **single).images,
            edit(source_image(), "make it red", generator=seeded(), **scales, **single).images,
            atol=0,
            rtol=0,
        )


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(image=source_image()), r"pass \['image'\] to `encode_prompt`"),
        (dict(max_area=1024), r"pass \['max_area'\] to `encode_prompt`"),
        (dict(height=48, width=32), "encoded at 32x32, the size of the output; got height=48, width=32"),
        (
            dict(image_guidance_scale=1.0),
            r"hold 3 guidance branch\(es\) .* runs 2 \(conditional, text-free\)",
        ),
        (dict(num_images_per_prompt=2), "encoded for num_images_per_prompt=1, but this call asks for 2"),
        (dict(prompt_embeds=None), "Pass `prompt`, or `prompt_embeds`"),
        (dict(prompt_embeds=None, prompt="x"), r"Pass `image` \(the source to edit\)"),
    ],
)
def test_edit_encoded_prompts_that_do_not_suit_the_call_are_refused(edit, call, message):
    embeds = edit.encode_prompt(source_image(), "make it red")
    with pytest.raises(ValueError, match=message):
        edit(**{"prompt_embeds": embeds, "num_inference_steps": STEPS, **call})
    with pytest.raises(ValueError, match="Pass `image`: the source image"):
        edit.encode_prompt(None, "make it red")


def test_encoded_prompts_serve_only_the_pipeline_kind_that_made_them(pipe, edit):
    """A text prompt's encoding has no source for an edit, and an edit's holds a source a text-to-image call would
    sample after: each pipeline refuses the other's; one side of an edit's encoded size may be given alone."""
    kwargs = dict(num_inference_steps=1, output_type="latent")
    text, edited = pipe.encode_prompt("a fox"), edit.encode_prompt(source_image(width=48), "make it red")
    with pytest.raises(ValueError, match="hold text prompts, which HydraXEditPipeline cannot sample from"):
        edit(prompt_embeds=text, image_guidance_scale=1.0, **kwargs)
    message = "hold an edit's instructions with their sources, which HydraXPipeline cannot sample from"
    with pytest.raises(ValueError, match=message):
        pipe(prompt_embeds=edited, guidance_scale=4.0, height=32, width=32, **kwargs)
    assert edit(prompt_embeds=edited, height=32, **kwargs).images.shape[-2:] == (2, 3)
    with pytest.raises(ValueError, match="encoded at 32x48, the size of the output; got height=None, width=32"):
        edit(prompt_embeds=edited, width=32, **kwargs)


def test_long_prompts_are_cut_to_max_sequence_length(pipe, edit):
    """diffusers' `max_sequence_length`: a prompt (and negative prompt) longer than the limit samples exactly as its
    first tokens do, and the cut text is logged; by default nothing is cut."""
    tokenizer = pipe.processor.tokenizer
    long, negative = "a red fox jumps over the lazy dog in the snow", "blurry and dark and grainy"

    def head(text, count=4):
        return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:count])

    assert len(tokenizer(long, add_special_tokens=False)["input_ids"]) > 4 < len(tokenizer(negative)["input_ids"])
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, output_type="pt", guidance_scale=3.0)
    cut = {}
    logged = pipeline_warnings(
        lambda: cut.update(pipe(long, negative, max_sequence_length=4, generator=seeded(), **kwargs))
    )
    assert f"truncated because `max_sequence_length` is set to 4 tokens: {long[len(head(long)) :]!r}" in logged
    assert f"{negative[len(head(negative)) :]!r}" in logged
    torch.testing.assert_close(
        cut["images"], pipe(head(long), head(negative), generator=seeded(), **kwargs).images, atol=0, rtol=0
    )
    assert not torch.equal(cut["images"], pipe(long, negative, generator=seeded(), **kwargs).images)
    assert pipeline_warnings(lambda: pipe(long, max_sequence_length=64, **kwargs)) == ""
    edit_kwargs = dict(num_inference_steps=STEPS, output_type="pt")
    torch.testing.assert_close(
        edit(source_image(), long, max_sequence_length=4, generator=seeded(), **edit_kwargs).images,
        edit(source_image(), head(long), generator=seeded(), **edit_kwargs).images,
        atol=0,
        rtol=0,
    )
    for bad in (0, 2.5, True, "64"):
        with pytest.raises(ValueError, match=f"`max_sequence_length` must be an int ≥ 1 .* got {bad!r}"):
            pipe("a fox", max_sequence_length=bad, **kwargs)
    logged = pipeline_warnings(lambda: pipe._prompts(["a", "b", "c"], negative, 4, guidance_scale=3.0))
    assert logged.count("truncated") == 1, "one negative prompt for three prompts is one cut, logged once"


@pytest.mark.parametrize(
    "text", ["🦊🦊🦊 a fox in snow", "一只红色的狐狸在雪地里", "café au lait très chaud", "\u3000" * 5 + "x"]
)
def test_max_sequence_length_cuts_between_characters(pipe, text):
    """Byte-level BPE splits an emoji, a CJK character or an accented letter into tokens that share its span: the cut
    falls before such a character when it straddles the limit, so the kept text is a prefix of at most N tokens."""
    tokenizer = pipe.processor.tokenizer
    total = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    for limit in range(1, total):
        kept = pipe._truncated([text], limit)[0]
        assert text.startswith(kept) and len(tokenizer(kept, add_special_tokens=False)["input_ids"]) <= limit
    assert pipe._truncated([text], total) == [text]


def test_max_sequence_length_cuts_every_long_prompt_of_a_batch(pipe):
    """Each distinct long prompt of a batch is cut to the limit, not only the first one."""
    tokenizer = pipe.processor.tokenizer
    prompts = ["a red fox jumps over the lazy dog", "a small blue boat sails on the quiet lake"]
    cut = pipe._truncated(prompts, 3)
    for text, kept in zip(prompts, cut):
        assert text.startswith(kept) and len(tokenizer(kept, add_special_tokens=False)["input_ids"]) == 3


def test_edit_encode_prompt_checks_its_source_images(edit):
    """The edit pipeline's encode_prompt refuses bad sources itself: out-of-range floats and a count mismatch."""
    with pytest.raises(ValueError, match=r"must hold values in \[0, 1\], got \[0.0, 2.0\]"):
        edit.encode_prompt(torch.full((3, 32, 32), 2.0).index_fill_(1, torch.tensor([0]), 0.0), "make it red")
    with pytest.raises(ValueError, match="Got 2 images for 3 prompts"):
        edit.encode_prompt([torch.rand(3, 32, 32)] * 2, ["a", "b", "c"])


def test_same_seed_same_output_different_seed_different(pipe, edit):
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, output_type="pt")
    first = pipe("a boat", generator=seeded(0), **kwargs).images
    torch.testing.assert_close(pipe("a boat", generator=seeded(0), **kwargs).images, first, atol=0, rtol=0)
    assert not torch.allclose(pipe("a boat", generator=seeded(1), **kwargs).images, first)
    kwargs = dict(num_inference_steps=STEPS, output_type="pt")
    edited = edit(source_image(), "make it red", generator=seeded(0), **kwargs).images
    torch.testing.assert_close(edit(source_image(), "make it red", generator=seeded(0), **kwargs).images, edited)
    assert not torch.allclose(edit(source_image(), "make it red", generator=seeded(1), **kwargs).images, edited)


def test_batched_prompts_and_num_images_per_prompt_equal_single_calls(pipe, edit):
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, output_type="pt", negative_prompt="blurry")
    prompts = ["a red fox", "a small blue boat on the lake"]  # different lengths: left padding between them
    batched = pipe(prompts, generator=[seeded(0), seeded(1)], **kwargs).images
    singles = [pipe(p, generator=seeded(i), **kwargs).images for i, p in enumerate(prompts)]
    torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=1e-5)
    repeated = pipe(prompts[0], num_images_per_prompt=2, generator=[seeded(0), seeded(5)], **kwargs).images
    torch.testing.assert_close(repeated[0], singles[0][0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(repeated[0], repeated[1])

    sources = [source_image(1), source_image(2)]
    kwargs = dict(num_inference_steps=STEPS, output_type="pt")
    batched = edit(sources, ["make it red", "add a hat"], generator=[seeded(0), seeded(1)], **kwargs).images
    singles = [
        edit(s, p, generator=seeded(i), **kwargs).images
        for i, (s, p) in enumerate(zip(sources, ["make it red", "add a hat"]))
    ]
    torch.testing.assert_close(batched, torch.cat(singles), atol=1e-5, rtol=1e-5)


def test_several_prompts_with_several_outputs_each_come_out_prompt_major(pipe, edit):
    """diffusers' order for 2 prompts x 2 outputs: p0, p0, p1, p1; each output, its anchor image or edit source
    belongs to its prompt, as in a single call."""
    prompts, generators = ["a red fox", "a small blue boat on the lake"], lambda: [seeded(i) for i in range(4)]
    kwargs = dict(num_inference_steps=1, output_type="latent", num_images_per_prompt=2)
    images = pipe(prompts, height=32, width=32, generator=generators(), **kwargs).images
    sources = [source_image(1), source_image(2)]
    videos = pipe(prompts, image=sources, num_frames=5, generator=generators(), **kwargs).frames
    edits = edit(sources, prompts, generator=generators(), **kwargs).images
    single = dict(num_inference_steps=1, output_type="latent")
    for i in range(4):
        prompt, image = prompts[i // 2], sources[i // 2]
        expected = pipe(prompt, height=32, width=32, generator=seeded(i), **single).images
        torch.testing.assert_close(images[i : i + 1], expected, atol=1e-5, rtol=1e-5)
        expected = pipe(prompt, image=image, num_frames=5, generator=seeded(i), **single).frames
        torch.testing.assert_close(videos[i : i + 1], expected, atol=1e-5, rtol=1e-5)
        expected = edit(image, prompt, generator=seeded(i), **single).images
        torch.testing.assert_close(edits[i : i + 1], expected, atol=1e-5, rtol=1e-5)


def test_callback_runs_once_per_step_and_can_replace_latents(pipe, edit):
    calls = []

    def callback(pipeline, step, timestep, callback_kwargs):
        calls.append((step, pipeline.current_timestep, callback_kwargs["latents"].shape))
        return {"latents": torch.zeros_like(callback_kwargs["latents"])} if step == 2 else {}

    out = pipe(
        "a fox", height=32, width=32, num_inference_steps=3, output_type="latent", callback_on_step_end=callback
    )
    assert [step for step, _, _ in calls] == [0, 1, 2] and pipe.num_timesteps == 3
    assert all(timestep is not None for _, timestep, _ in calls) and pipe.current_timestep is None
    assert torch.equal(out.images, torch.zeros(1, 8, 1, 2, 2))
    calls.clear()
    out = edit(source_image(), "x", num_inference_steps=3, output_type="latent", callback_on_step_end=callback)
    assert len(calls) == 3 and torch.equal(out.images, torch.zeros(1, 8, 1, 2, 2))


@pytest.mark.parametrize("task", ["text", "edit"])
def test_a_callback_can_cut_guidance_off_and_later_steps_run_only_the_branches_left(pipe, task, monkeypatch):
    """diffusers' CFG cutoff: a step callback setting `pipe._guidance_scale = 1.0` (an edit's
    `_image_guidance_scale`) turns that guidance off from the next step, which runs only the remaining branches' rows
    and equals a call without that guidance resumed from the cut's latents; turning on guidance a call started
    without is refused."""
    unshifted = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False)  # σ = 1, 0.5 for two steps
    target = HydraXPipeline.from_pipe(pipe, scheduler=unshifted)
    if task == "edit":
        target = HydraXEditPipeline.from_pipe(target)
        inputs, scales = (
            dict(image=source_image(), prompt="make it red"),
            dict(guidance_scale=3.0, image_guidance_scale=2),
        )
        name, rows = "_image_guidance_scale", [3, 2]
    else:
        inputs, scales, name, rows = (
            dict(prompt="a fox", height=32, width=32),
            dict(guidance_scale=3.0),
            "_guidance_scale",
            [2, 1],
        )
    target.set_progress_bar_config(disable=True)
    cut = {}

    def cut_guidance(pipeline, step, timestep, callback_kwargs):
        if step == 0:
            setattr(pipeline, name, 1.0)
            cut["latents"] = callback_kwargs["latents"].clone()
        return {}

    seen, predict = [], target.model.predict_velocity
    monkeypatch.setattr(
        target.model, "predict_velocity", lambda *a: seen.append(a[2].attention_mask.shape[0]) or predict(*a)
    )
    kwargs = dict(output_type="latent", generator=seeded())
    out = target(**inputs, **scales, num_inference_steps=2, callback_on_step_end=cut_guidance, **kwargs).images
    assert seen == rows and getattr(target, name) == 1.0
    off = {**scales, name.removeprefix("_"): 1.0}
    resumed = target(**inputs, **off, sigmas=[0.5], latents=cut["latents"], **kwargs).images
    torch.testing.assert_close(out, resumed, atol=1e-6, rtol=0)

    def turn_on(pipeline, step, timestep, callback_kwargs):
        pipeline._guidance_scale = 3.0
        return {}

    unguided = {**off, "guidance_scale": 1.0}
    with pytest.raises(ValueError, match="A step callback set guidance_scale=3.0.* start the call with that guidance"):
        target(**inputs, **unguided, num_inference_steps=2, callback_on_step_end=turn_on, **kwargs)


def test_a_callback_setting_a_non_finite_guidance_scale_is_refused(pipe):
    """A step callback that sets guidance_scale to NaN is refused, not run silently as guidance off."""

    def to_nan(pipeline, step, timestep, callback_kwargs):
        pipeline._guidance_scale = float("nan")
        return {}

    with pytest.raises(ValueError, match="`guidance_scale` must be a finite number"):
        pipe(
            "a fox",
            height=32,
            width=32,
            num_inference_steps=2,
            guidance_scale=3.0,
            output_type="latent",
            callback_on_step_end=to_nan,
        )


def test_edit_outputs_follow_the_source(edit):
    kwargs = dict(num_inference_steps=STEPS, output_type="pt")
    first = edit(source_image(1), "make it red", generator=seeded(), **kwargs).images
    second = edit(source_image(2), "make it red", generator=seeded(), **kwargs).images
    assert first.shape == (1, 3, 32, 32) and not torch.allclose(first, second, atol=1e-4)
    result = {}
    logged = pipeline_warnings(lambda: result.update(out=edit(source_image(1, 30, 50), "x", **kwargs)))
    assert "(30, 50)" in logged and "32x48" in logged and result["out"].images.shape == (1, 3, 32, 48)
    pil = edit(PIL.Image.new("RGB", (48, 32), "white"), "x", num_inference_steps=STEPS).images
    assert pil[0].size == (48, 32)
    sized = edit(source_image(), "x", height=48, width=64, num_inference_steps=STEPS, output_type="np").images
    assert sized.shape == (1, 48, 64, 3)
    for scales in ((1.0, 1.0), (3.0, 1.0), (1.0, 2.0)):
        out = edit(source_image(), "x", guidance_scale=scales[0], image_guidance_scale=scales[1], **kwargs).images
        assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_edit_prompts_put_the_instruction_before_the_source(edit):
    """SPEC's edit layout `[instruction, source, target]`: the source's LLM states see the instruction."""
    pixels = edit.video_processor.preprocess(source_image(), height=32, width=32)
    ids, _ = edit._tokenize([edit._conversation("make it red", {"type": "image"}, pixels[0])])
    text = edit.processor.tokenizer.decode(ids[0])
    assert text.index("make it red") < text.index("<|image_pad|>") < text.index("<|im_start|>assistant")
    assert text.endswith("<|vision_start|>") and text.count("<|vision_start|>") == 2


def test_max_area_caps_the_size_taken_from_the_input_image(pipe, edit):
    """A large source is edited (or animated) at most at `max_area` pixels with its aspect ratio, logged, as diffusers'
    Kontext and Qwen-Image-Edit pipelines do; explicit sizes and small sources are left alone."""
    kwargs = dict(num_inference_steps=1, output_type="np")
    result = {}
    logged = pipeline_warnings(
        lambda: result.update(out=edit(source_image(1, 64, 96), "x", max_area=32 * 48, **kwargs))
    )
    assert "64x96" in logged and "max_area=1536" in logged and "32x48" in logged
    assert result["out"].images.shape == (1, 32, 48, 3)
    logged = pipeline_warnings(lambda: result.update(out=edit(source_image(1, 64, 96), "x", **kwargs)))
    assert logged == "" and result["out"].images.shape == (1, 64, 96, 3), "within the default max_area (1024²)"
    explicit = edit(source_image(1, 64, 96), "x", height=64, width=96, max_area=32 * 48, **kwargs).images
    assert explicit.shape == (1, 64, 96, 3)
    one_side = edit(source_image(1, 64, 96), "x", height=32, **kwargs).images  # the width keeps the 2:3 ratio
    assert one_side.shape == (1, 32, 48, 3)
    frames = pipe("a fox", image=source_image(1, 96, 64), num_frames=5, max_area=32 * 32, **kwargs).frames
    assert frames.shape == (1, 5, 32, 16, 3)  # 96x64 scaled to ≤ 1024 pixels: 39x26 → 32x16 on the 16-pixel grid
    for bad in (0, 255, 1.5e6, True):
        with pytest.raises(ValueError, match=f"`max_area` must be an int ≥ 256 pixels .* got {bad!r}"):
            edit(source_image(), "x", max_area=bad)


def test_cached_sampler_equals_the_reference_sampler(pipe, edit):
    """The pipelines' loop (prompt and source computed once, branches batched) against full forwards per branch."""
    target = {"type": "image", "height": 32, "width": 48}
    noise = torch.randn(1, 8, 1, 2, 3, generator=seeded(3))
    cached = pipe("a red fox", height=32, width=48, num_inference_steps=3, guidance_scale=3.0, latents=noise,
                  output_type="latent").images  # fmt: skip
    branches = list(pipe._encode_prompts([pipe._conversation("a red fox", target)], None))
    reference = reference_sample(pipe, branches, [3.0, -2.0], noise.clone(), 3)
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)

    pixels = edit.video_processor.preprocess(source_image(), height=32, width=32)
    cached = edit(source_image(), "make it red", num_inference_steps=3, guidance_scale=3.0, image_guidance_scale=2.0,
                  latents=noise[..., :2], output_type="latent").images  # fmt: skip
    conditional, text_free = edit._encode_prompts(
        [edit._conversation("make it red", {"type": "image"}, pixels[0])], None
    )
    sources = [pixels, pixels, torch.zeros_like(pixels)]
    reference = reference_sample(
        edit, [conditional, text_free, text_free], [3.0, -1.0, -1.0], noise[..., :2].clone(), 3, sources
    )
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)


def test_guidance_rescale_follows_the_reference_sampler(pipe, edit):
    """`guidance_rescale` moves each output's guided velocity toward the standard deviation of its conditional branch
    (an edit's branch with instruction and source), as the reference sampler writes it out; 0 is plain guidance."""
    prompts, target = ["a red fox", "a small blue boat"], {"type": "image", "height": 32, "width": 32}
    noise = torch.randn(2, 8, 1, 2, 2, generator=seeded(3))
    kwargs = dict(height=32, width=32, num_inference_steps=2, guidance_scale=5.0, output_type="latent")
    branches = list(pipe._encode_prompts([pipe._conversation(text, target) for text in prompts], None))
    outputs = {}
    for rescale in (0.0, 0.7, 1.0):
        outputs[rescale] = pipe(prompts, latents=noise, guidance_rescale=rescale, **kwargs).images
        reference = reference_sample(pipe, branches, [5.0, -4.0], noise.clone(), 2, guidance_rescale=rescale)
        torch.testing.assert_close(outputs[rescale], reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(outputs[0.0], pipe(prompts, latents=noise, **kwargs).images)
    assert (outputs[0.7] - outputs[0.0]).abs().amax() > 1e-2 and (outputs[1.0] - outputs[0.7]).abs().amax() > 1e-3

    pixels = edit.video_processor.preprocess(source_image(), height=32, width=32)
    conditional, text_free = edit._encode_prompts(
        [edit._conversation("make it red", {"type": "image"}, pixels[0])], None
    )
    sources, weights = [pixels, pixels, torch.zeros_like(pixels)], [3.0, -1.0, -1.0]
    cached = edit(source_image(), "make it red", num_inference_steps=2, guidance_scale=3.0, image_guidance_scale=2.0,
                  guidance_rescale=0.7, latents=noise[:1], output_type="latent").images  # fmt: skip
    reference = reference_sample(
        edit, [conditional, text_free, text_free], weights, noise[:1].clone(), 2, sources, guidance_rescale=0.7
    )
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)


def test_guidance_rescale_leaves_the_image_to_video_anchor_out(pipe, monkeypatch):
    """The anchor's velocity, which each step discards, takes no part in the rescale's deviations: making it 100×
    larger leaves the video as it was."""
    kwargs = dict(image=source_image(), num_frames=5, num_inference_steps=2, guidance_scale=5.0, guidance_rescale=0.7)
    expected = pipe("a red fox", generator=seeded(0), output_type="latent", **kwargs).frames
    predict = pipe.model.predict_velocity

    def loud_anchor(*args, **kwargs):
        velocity = predict(*args, **kwargs).clone()
        velocity[:, :, 0] *= 100
        return velocity

    monkeypatch.setattr(pipe.model, "predict_velocity", loud_anchor)
    assert torch.equal(pipe("a red fox", generator=seeded(0), output_type="latent", **kwargs).frames, expected)


def test_guidance_rescale_without_guidance_is_logged(pipe, edit):
    noise = torch.randn(1, 8, 1, 2, 2, generator=seeded(3))
    kwargs = dict(height=32, width=32, num_inference_steps=1, latents=noise, output_type="latent")
    plain = pipe("a fox", guidance_scale=1.0, **kwargs).images
    logged = pipeline_warnings(lambda: pipe("a fox", guidance_scale=1.0, guidance_rescale=0.5, **kwargs))
    assert "guidance_rescale=0.5 has no effect: it rescales classifier-free guidance, which is off at " in logged
    assert "guidance_scale=1.0" in logged
    assert torch.equal(pipe("a fox", guidance_scale=1.0, guidance_rescale=0.5, **kwargs).images, plain)
    logged = pipeline_warnings(
        lambda: edit(source_image(), "x", guidance_scale=1.0, image_guidance_scale=0.5, guidance_rescale=0.5, **kwargs)
    )
    assert "off at guidance_scale=1.0, image_guidance_scale=0.5" in logged
    assert "has no effect" not in pipeline_warnings(lambda: pipe("a fox", guidance_rescale=0.5, **kwargs))
    text_guided = pipeline_warnings(
        lambda: edit(source_image(), "x", image_guidance_scale=1.0, guidance_rescale=0.5, **kwargs)
    )
    assert "has no effect" not in text_guided
    with pytest.raises(ValueError, match="`guidance_rescale` must be a number in .* got 2"):
        edit(source_image(), "x", guidance_rescale=2)


def test_guidance_branches_are_the_prompt_its_text_dropped_and_the_negative_prompt(pipe, edit):
    """The reference sampler on branches built here, not by the pipelines' `_encode_prompts`: the text-free branch is
    the prompt with its text dropped as in training, a negative prompt is the negative branch, and an edit guided by
    text alone keeps the source in both branches."""
    target = {"type": "image", "height": 32, "width": 32}
    noise = torch.randn(1, 8, 1, 2, 2, generator=seeded(3))
    kwargs = dict(height=32, width=32, num_inference_steps=2, guidance_scale=3.0, output_type="latent")
    ids, mask = pipe._tokenize([pipe._conversation("a red fox", target)])
    cached = pipe("a red fox", latents=noise, **kwargs).images
    reference = reference_sample(pipe, [(ids, mask), (pipe.model.unconditional_input_ids(ids), mask)], [3.0, -2.0],
                                 noise.clone(), 2)  # fmt: skip
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)
    negative = "a small blue boat on the lake"
    ids, mask = pipe._tokenize([pipe._conversation(text, target) for text in ("a red fox", negative)])
    cached = pipe("a red fox", negative_prompt=negative, latents=noise, **kwargs).images
    reference = reference_sample(pipe, [(ids[:1], mask[:1]), (ids[1:], mask[1:])], [3.0, -2.0], noise.clone(), 2)
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)

    pixels = edit.video_processor.preprocess(source_image(), height=32, width=32)
    ids, mask = edit._tokenize([edit._conversation("make it red", {"type": "image"}, pixels[0])])
    branches = [(ids, mask), (edit.model.unconditional_input_ids(ids), mask)]
    cached = edit(source_image(), "make it red", num_inference_steps=2, guidance_scale=3.0, image_guidance_scale=1.0,
                  latents=noise, output_type="latent").images  # fmt: skip
    reference = reference_sample(edit, branches, [3.0, -2.0], noise.clone(), 2, [pixels, pixels])
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("edit", [False, True])
def test_pushing_a_pipeline_is_refused_with_the_way_to_upload_it(pipe, edit, tmp_path):
    """diffusers' push_to_hub uploaded its blank model card (library_name diffusers, no remote-code snippet)."""
    pipeline = HydraXEditPipeline.from_pipe(pipe) if edit else pipe
    with pytest.raises(ValueError, match="not supported by Hydra-X pipelines.*model_card_hydrax.py"):
        pipeline.push_to_hub("me/hydrax")
    with pytest.raises(ValueError, match="not supported by Hydra-X pipelines"):
        pipeline.save_pretrained(tmp_path / "out", push_to_hub=True)
    assert not (tmp_path / "out").exists()


def test_save_load_round_trip_and_generic_diffusers_loading(pipe, tmp_path):
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, output_type="pt")
    expected = pipe("a fox", generator=seeded(), **kwargs).images
    pipe.save_pretrained(tmp_path / "saved")
    names = {path.name for path in (tmp_path / "saved").iterdir()}
    assert {"model_index.json", "scheduler", "config.json", "model.safetensors", "pipeline_hydrax.py"} <= names
    assert len(list((tmp_path / "saved").rglob("*.safetensors"))) == 1, "one copy of the weights"
    loaded = HydraXPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    torch.testing.assert_close(loaded("a fox", generator=seeded(), **kwargs).images, expected)
    assert loaded.scheduler.config.use_dynamic_shifting
    generic = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    generic.set_progress_bar_config(disable=True)
    assert type(generic).__name__ == "HydraXPipeline"
    torch.testing.assert_close(generic("a fox", generator=seeded(), **kwargs).images, expected)
    lcm = HydraXPipeline.from_pretrained(tmp_path / "saved", model=pipe.model, processor=pipe.processor)
    lcm.scheduler = FlowMatchLCMScheduler.from_config(pipe.scheduler.config)
    lcm.save_pretrained(tmp_path / "lcm")
    assert type(HydraXPipeline.from_pretrained(tmp_path / "lcm").scheduler) is FlowMatchLCMScheduler  # as saved
    bf16 = HydraXPipeline.from_pretrained(tmp_path / "saved", torch_dtype=torch.bfloat16)
    assert bf16.model.dtype == torch.bfloat16
    for per_component, dtype in (  # diffusers' per-component dtypes: the model's entry, else "default", else fp32
        ({"model": torch.bfloat16, "default": torch.float16}, torch.bfloat16),
        ({"default": torch.bfloat16}, torch.bfloat16),
        ({"scheduler": torch.bfloat16}, torch.float32),
    ):
        assert HydraXEditPipeline.from_pretrained(tmp_path / "saved", torch_dtype=per_component).model.dtype == dtype
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tmp_path / "saved")


def test_a_weights_variant_loads_back_through_both_routes(pipe, tmp_path):
    """`save_pretrained(variant="fp16")` writes the root's `model.fp16.safetensors`; diffusers' generic route refused
    the folder ("no such modeling files"): it looks for variants in the component subfolders only."""
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, output_type="pt")
    expected = pipe("a fox", generator=seeded(), **kwargs).images
    pipe.save_pretrained(tmp_path / "saved", variant="fp16")
    assert (tmp_path / "saved" / "model.fp16.safetensors").is_file()
    for loaded in (
        HydraXPipeline.from_pretrained(tmp_path / "saved", variant="fp16"),
        DiffusionPipeline.from_pretrained(tmp_path / "saved", variant="fp16", trust_remote_code=True),
    ):
        loaded.set_progress_bar_config(disable=True)
        torch.testing.assert_close(loaded("a fox", generator=seeded(), **kwargs).images, expected)


def test_remote_pipeline_loads_without_our_packages(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    expected = pipe(
        "a fox", height=32, width=32, num_inference_steps=STEPS, generator=seeded(), output_type="pt"
    ).images
    torch.save(expected, tmp_path / "expected.pt")
    source = str(tmp_path / "saved")
    script = BLOCK_OUR_PACKAGES + textwrap.dedent(
        f"""
        import filecmp, os, sys, torch
        from diffusers import DiffusionPipeline
        # the edit pipeline first, in a fresh module cache: diffusers copies only its direct relative imports
        first = DiffusionPipeline.from_pretrained({source!r}, custom_pipeline="pipeline_hydrax_edit",
                                                  trust_remote_code=True)
        assert type(first).__name__ == "HydraXEditPipeline"
        pipe = DiffusionPipeline.from_pretrained({source!r}, custom_pipeline="pipeline_hydrax", trust_remote_code=True)
        assert type(pipe.model).__module__.startswith("transformers_modules."), type(pipe.model).__module__
        pipe.set_progress_bar_config(disable=True)
        out = pipe("a fox", height=32, width=32, num_inference_steps={STEPS},
                   generator=torch.Generator().manual_seed(0), output_type="pt").images
        torch.testing.assert_close(out, torch.load({str(tmp_path / "expected.pt")!r}))
        edit = DiffusionPipeline.from_pretrained({source!r}, custom_pipeline="pipeline_hydrax_edit",
                                                 trust_remote_code=True, dtype=torch.bfloat16)
        assert type(edit).__name__ == "HydraXEditPipeline" and edit.model.dtype == torch.bfloat16
        edit.set_progress_bar_config(disable=True)
        assert edit(torch.rand(3, 32, 32), "x", num_inference_steps=1, output_type="pt").images.shape == (1, 3, 32, 32)
        edit.save_pretrained({str(tmp_path / "again")!r})
        assert type(DiffusionPipeline.from_pretrained({str(tmp_path / "again")!r}, trust_remote_code=True)).__name__ \\
            == "HydraXEditPipeline"
        files = {list(pipeline_hydrax.PIPELINE_FILES)!r}
        pipe.save_pretrained({str(tmp_path / "resaved")!r})  # every file, the checkpoint's own
        assert all(filecmp.cmp(os.path.join({source!r}, name), os.path.join({str(tmp_path / "resaved")!r}, name))
                   for name in files)
        os.chdir({source!r})  # "." inside the checkpoint folder
        assert type(DiffusionPipeline.from_pretrained(".", trust_remote_code=True)).__name__ == "HydraXPipeline"
        pipe.save_pretrained({source!r})  # load, tweak, save back into the folder it came from
        assert type(DiffusionPipeline.from_pretrained({source!r}, trust_remote_code=True)).__name__ == "HydraXPipeline"
        print("ok")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            dict(height=30, width=32),
            ValueError,
            "`height` must be a positive multiple of the tokenizer's patch size 16",
        ),
        (dict(num_frames=0), ValueError, "`num_frames` must be an int ≥ 1"),
        (dict(num_frames=3), ValueError, "num_frames=3 is too few for a video"),
        (
            dict(image=np.full((32, 32, 3), 200.0), num_frames=5),
            ValueError,
            r"must hold values in \[0, 1\], got \[200.0, 200.0\]",
        ),
        (
            dict(image=torch.full((3, 32, 32), 255.0), num_frames=5),  # e.g. `read_image(path).float()`
            ValueError,
            r"array or tensor must hold values in \[0, 1\], got \[255.0, 255.0\]",
        ),
        (
            dict(image=np.full((32, 32, 3), 255, np.int32), num_frames=5),
            ValueError,
            r"hold uint8 \(0–255\) or uint16 pixels, or floats in \[0, 1\]; got dtype int32",
        ),
        (dict(image=torch.ones(3, 32, 32, dtype=torch.bool), num_frames=5), ValueError, "got dtype torch.bool"),
        (dict(prompt=[]), ValueError, "`prompt` is an empty list"),
        (dict(prompt=3), TypeError, "`prompt` must be a string or a list of strings"),
        (
            dict(image=[torch.rand(3, 32, 32)] * 3, num_frames=5, prompt=["a", "b"]),
            ValueError,
            "3 images for 2 prompts",
        ),
        (dict(image="not-an-image.png", num_frames=5), TypeError, "`image` must be a PIL image"),
        (dict(image=torch.rand(3, 32, 32)), ValueError, "needs num_frames = 1 \\+ 4k > 1"),
        (dict(negative_prompt="ugly", guidance_scale=1.0), ValueError, "raise the guidance scale above 1"),
        (dict(negative_prompt=["a", "b"]), ValueError, "2 negative prompts for 1 prompts"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, r"names \['noise'\]"),
        (dict(output_type="jpeg"), ValueError, "`output_type` must be one of"),
        (dict(latents=torch.randn(1, 8, 1, 3, 3)), ValueError, r"`latents` must have shape \(1, 8, 1, 2, 2\)"),
        (dict(num_inference_steps=0), ValueError, "`num_inference_steps` must be an int ≥ 1"),
        (
            dict(generator=[torch.Generator()] * 2, num_images_per_prompt=3),
            ValueError,
            "2 generators for 3 outputs",
        ),
        (dict(guidance_scale=float("nan"), negative_prompt="ugly"), ValueError, "`guidance_scale` must be a finite"),
        (dict(guidance_scale=float("inf")), ValueError, "`guidance_scale` must be a finite number"),
        (dict(guidance_scale=None), ValueError, "`guidance_scale` must be a finite number"),
        (dict(guidance_rescale=-0.1), ValueError, r"`guidance_rescale` must be a number in \[0, 1\] .* got -0.1"),
        (dict(guidance_rescale=1.5), ValueError, r"`guidance_rescale` must be a number in \[0, 1\] .* got 1.5"),
        (dict(guidance_rescale=float("nan")), ValueError, "`guidance_rescale` must be a number in .* got nan"),
        (dict(guidance_rescale=True), ValueError, "`guidance_rescale` must be a number in .* got True"),
        (dict(sigmas=[]), ValueError, "`sigmas` must be a non-empty 1-D sequence"),
        (dict(sigmas=[[1.0, 0.5]]), ValueError, "`sigmas` must be a non-empty 1-D sequence"),
        (dict(sigmas=[1.0, float("nan")]), ValueError, "`sigmas` must be a non-empty 1-D sequence"),
        (dict(sigmas=[2.0, 1.0]), ValueError, r"`sigmas` are noise levels falling from 1 .* got \[2.0, 1.0\]"),
        (dict(sigmas=[1.0, -0.5]), ValueError, r"within \[0, 1\], e.g. \[1.0, 0.75, 0.5, 0.25\]; got \[1.0, -0.5\]"),
        (dict(sigmas=[0.2, 0.9]), ValueError, r"`sigmas` are noise levels falling .* got \[0.2, 0.9\]"),  # rising
        (
            dict(prompt=["a fox", "a sign that reads <|vision_pad|>"]),
            ValueError,
            r"`prompt` 1 holds \['<\|vision_pad\|>'\], which mark visual blocks",
        ),
        (dict(negative_prompt="<|image_pad|>"), ValueError, r"`negative_prompt` 0 holds \['<\|image_pad\|>'\]"),
    ],
)
def test_bad_input_names_the_value_and_the_fix(pipe, kwargs, error, message):
    call = dict(prompt="a fox", height=32, width=32, num_inference_steps=1) | kwargs
    with pytest.raises(error, match=message):
        pipe(**call)


def test_every_image_input_form_gives_the_same_pixels(pipe):
    """PIL images of any mode, uint8 or [0, 1] arrays and tensors, lists of different sizes: what diffusers users
    pass as `image`, all read as the same RGB pixels in [-1, 1]."""
    rgb = np.asarray(PIL.Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)))
    reference = pipe._preprocess_images(PIL.Image.fromarray(rgb), 32, 48, 1)
    forms = [
        rgb,
        rgb / 255,
        torch.from_numpy(rgb).permute(2, 0, 1),
        torch.from_numpy(rgb).permute(2, 0, 1) / 255,
        PIL.Image.fromarray(rgb).convert("RGBA"),
        (rgb / 255).astype(">f4"),  # big-endian data (FITS, raw dumps), which torch cannot read as it is
        (rgb.astype(np.uint16) * 257).astype(">u2"),
    ]
    for form in forms:
        pipe._check_images(form, 1)
        torch.testing.assert_close(pipe._preprocess_images(form, 32, 48, 1), reference, atol=1e-6, rtol=0)
    gray = pipe._preprocess_images(PIL.Image.fromarray(rgb).convert("L"), 32, 48, 1)
    assert gray.shape == (1, 3, 32, 48) and torch.equal(gray[:, 0], gray[:, 1])
    mixed = [rgb, rgb[:16, :32], torch.rand(3, 48, 32)]  # different sizes, each resized on its own
    assert pipe._preprocess_images(mixed, 32, 48, 3).shape == (3, 3, 32, 48)
    # resized, an array or tensor is averaged as a PIL image is (nearest neighbour turned 1-pixel stripes white)
    stripes = np.zeros((64, 96, 3), dtype=np.uint8)
    stripes[:, 1::2] = 255
    resized = pipe._preprocess_images(PIL.Image.fromarray(stripes), 32, 48, 1)
    assert resized.abs().mean() < 0.05, "a mid-gray"
    for form in (stripes, stripes / 255, torch.from_numpy(stripes).permute(2, 0, 1)):
        torch.testing.assert_close(pipe._preprocess_images(form, 32, 48, 1), resized, atol=1e-6, rtol=0)
    side = np.int64(32)  # e.g. from an array's shape
    images = pipe("a fox", height=side, width=side, num_inference_steps=1, output_type="np").images
    assert images.shape == (1, 32, 32, 3)


def test_latent_and_generator_checks_come_before_the_llm_runs(pipe, edit, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the prompt ran before the inputs were checked")

    monkeypatch.setattr(pipe.model, "prepare_generation_prefix", refuse)
    with pytest.raises(ValueError, match="2 generators for 1 outputs"):
        pipe("a fox", height=32, width=32, generator=[seeded(), seeded()])
    with pytest.raises(ValueError, match="`latents` must have shape"):
        edit(source_image(), "x", latents=torch.randn(1, 8, 1, 3, 3))


def test_bad_edit_input(edit):
    with pytest.raises(TypeError, match="`image` must be a PIL image"):
        edit({"not": "an image"}, "x")
    with pytest.raises(ValueError, match="2 images for 3 prompts"):
        edit([source_image(), source_image()], ["a", "b", "c"])
    with pytest.raises(ValueError, match="2 images for 3 prompts"):  # a batch in a list counts its images
        edit([torch.rand(2, 3, 32, 32)], ["a", "b", "c"])


def test_a_batch_inside_a_list_counts_as_its_images(pipe, edit):
    """diffusers concatenates a list of batches: `[batch of 2]` is two images, one per prompt, as the list of both."""
    first, second = torch.rand(3, 32, 32, generator=seeded(1)), torch.rand(3, 32, 32, generator=seeded(2))
    kwargs = dict(num_inference_steps=1, output_type="pt")
    for call, extra in ((edit, {}), (pipe, {"num_frames": 5})):
        listed = call(image=[first, second], prompt=["a", "b"], generator=seeded(), **extra, **kwargs)
        batched = call(image=[torch.stack([first, second])], prompt=["a", "b"], generator=seeded(), **extra, **kwargs)
        output = "images" if call is edit else "frames"
        torch.testing.assert_close(getattr(batched, output), getattr(listed, output), rtol=0, atol=0)
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        pipe(image=[torch.stack([first, second])], prompt="a", num_frames=5, **kwargs)
    with pytest.raises(ValueError, match="raise the guidance scale above 1"):
        edit(source_image(), "x", negative_prompt="y", guidance_scale=1.0, image_guidance_scale=1.0)


@pytest.mark.parametrize("module", [pipeline_hydrax, pipeline_hydrax_edit])
def test_example_docstrings_run(module, monkeypatch):
    monkeypatch.chdir(ROOT)
    lines = [line.strip() for line in module.EXAMPLE_DOC_STRING.splitlines()]
    code, expected = [], []
    for line in lines:
        if line.startswith((">>> ", "... ")):
            code.append(line[4:])
        elif line and not line.startswith(("```", "Examples:", "Save")) and code:
            expected.append((len(code) - 1, line))
    namespace = {}
    for index, statement in enumerate(code):
        outputs = [text for at, text in expected if at == index]
        if outputs:
            assert repr(eval(statement, namespace)) == outputs[0], statement
        else:
            exec(statement, namespace)


def test_bench_runs_at_toy_sizes(capsys):
    bench_main(["--grid", "2", "--steps", "3", "--short-prompt", "4", "--long-prompt", "12", "--hidden-size", "64",
                "--layers", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert "faster per step than the reference" in out and "prompt length:" in out and "CFG cutoff: a step" in out
    errors = [float(value.rstrip(",")) for value in out.split("max |Δ latents|")[1].split() if value[0].isdigit()]
    assert len(errors) == 2 and max(errors) < 1e-4


def test_model_cpu_offload_brings_the_model_in_for_every_task(checkpoint, monkeypatch):
    """`enable_model_cpu_offload`'s hook moves the model to the device when it runs; the pipelines call the model's
    other methods, never `forward`, so each call must run the hook itself (on CPU the move is a no-op: the calls are
    counted)."""
    pipe = HydraXPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload(device="cpu")  # an accelerator moves the model there per call; CPU checks the hooks
    onloads, pre_forward = [], accelerate.hooks.CpuOffload.pre_forward
    monkeypatch.setattr(
        accelerate.hooks.CpuOffload,
        "pre_forward",
        lambda hook, module, *args, **kwargs: onloads.append(module) or pre_forward(hook, module, *args, **kwargs),
    )  # the hook is re-created after every call (`maybe_free_model_hooks`)
    out = pipe("a fox", height=32, width=32, num_inference_steps=1, output_type="pt").images
    assert out.shape == (1, 3, 32, 32) and onloads == [pipe.model]
    edit = HydraXEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    edit(source_image(), "x", num_inference_steps=1)
    assert onloads == [pipe.model] * 2


def offload_calls(pipe) -> dict:
    """Every path that reads the model's weights: the three pipeline tasks (a 9-frame video decodes in two streamed
    chunks) and answering a question with `generate`."""
    edit = HydraXEditPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, output_type="pt")
    question = torch.tensor([[5] + visual_block(pipe.model.config, 4) + [6]])
    return {
        "text-to-image": lambda: pipe("a fox", generator=seeded(), **kwargs).images,
        "image-to-video": lambda: pipe("a", image=source_image(), num_frames=9, generator=seeded(), **kwargs).frames,
        "edit": lambda: edit(source_image(), "x", generator=seeded(), **kwargs).images,
        "understanding": lambda: pipe.model.generate(
            input_ids=question, pixel_values=source_image()[None] * 2 - 1, max_new_tokens=3, do_sample=False
        ),
    }


@pytest.mark.parametrize("offload", ["sequential", "leaf_level", "block_level", "device_map"])
def test_offloaded_weights_give_the_same_outputs(pipe, checkpoint, tmp_path, offload):
    """Low-memory modes keep the weights elsewhere and bring each module's (or block's) own weights in when
    its forward runs, so a weight read outside that forward is wrong: meta (sequential) or stale (group offloading).

    - `enable_sequential_cpu_offload` attaches accelerate's `cpu_offload` hooks; diffusers always names the device
      `cpu:0`, which accelerate cannot offload to, so the hooks are attached here directly.
    - `enable_group_offload` to disk: every offloaded weight is overwritten with NaN, so a block used while offloaded
      shows. Block level relies on `_group_offload_block_modules`.
    - `from_pretrained(device_map="auto", max_memory=...)`: transformers' placement, part of it on disk (and
      `from_pipe` keeps it there)."""
    expected = {task: call() for task, call in offload_calls(pipe).items()}
    budget = {"cpu": sum(p.numel() for p in pipe.model.parameters()) * 4 // 3, "disk": 10**12}  # ⅔ of fp32 on disk
    placement = dict(device_map="auto", max_memory=budget, offload_folder=tmp_path) if offload == "device_map" else {}
    offloaded = HydraXPipeline.from_pretrained(checkpoint, **placement)
    offloaded.set_progress_bar_config(disable=True)
    if offload == "device_map":
        assert "disk" in offloaded.model.hf_device_map.values()
    elif offload == "sequential":
        accelerate.cpu_offload(offloaded.model, torch.device("cpu"))
        assert all(parameter.device.type == "meta" for parameter in offloaded.model.parameters())
    else:
        offloaded.enable_group_offload(
            torch.device("cpu"),
            offload_type=offload,
            num_blocks_per_group=1 if offload == "block_level" else None,
            offload_to_disk_path=tmp_path,
        )
        for parameter in offloaded.model.parameters():
            parameter.data.fill_(float("nan"))
    for task, call in offload_calls(offloaded).items():
        torch.testing.assert_close(call(), expected[task], rtol=0, atol=1e-6, msg=task)


def test_group_offloading_refuses_tied_embeddings_and_sequential_offloading_keeps_them(pipe):
    """With `tie_word_embeddings` (the 1.5B preset) the LM head and the token embeddings share one weight, which group
    offloading would split between two groups; sequential offloading keeps it (accelerate ties it on the device)."""
    from modeling_hydrax import HydraXConfig, HydraXForConditionalGeneration
    from modeling_hydrax.configuration_hydrax_presets import preset_kwargs

    text_config = {**preset_kwargs("tiny")["text_config"], "tie_word_embeddings": True}
    tied = HydraXForConditionalGeneration(HydraXConfig.from_preset("tiny", text_config=text_config)).eval()
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    tied_pipe = HydraXPipeline(model=tied, processor=pipe.processor, scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="shares the token embeddings' weight .* enable_sequential_cpu_offload"):
        tied_pipe.enable_group_offload(torch.device("cpu"), offload_type="leaf_level")
    ids = torch.tensor([[5, 7, 9, 11, 6]])
    with torch.no_grad():
        expected = tied(input_ids=ids).logits
        accelerate.cpu_offload(tied, torch.device("cpu"))
        torch.testing.assert_close(tied(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_tuple_output_components_and_dtype_follow_diffusers(pipe, edit, checkpoint):
    """diffusers' common pipeline checks: `return_dict=False`, a pipeline rebuilt from `components`, `torch_dtype=` on
    load (bf16 within a few 8-bit levels of fp32, no NaN), `from_pipe` keeping the dtype unless asked (through
    `.to(dtype)`)."""
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, output_type="np")
    reference = pipe("a fox", generator=seeded(), **kwargs).images
    (as_tuple,) = pipe("a fox", generator=seeded(), return_dict=False, **kwargs)
    np.testing.assert_array_equal(as_tuple, reference)
    (edited,) = edit(source_image(), "x", generator=seeded(), return_dict=False, num_inference_steps=STEPS)
    assert isinstance(edited[0], PIL.Image.Image)
    assert set(pipe.components) == {"model", "processor", "scheduler"} and not pipe._optional_components
    rebuilt = HydraXPipeline(**pipe.components)
    rebuilt.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(rebuilt("a fox", generator=seeded(), **kwargs).images, reference)

    half = HydraXPipeline.from_pretrained(checkpoint, torch_dtype=torch.bfloat16)
    half.set_progress_bar_config(disable=True)
    assert HydraXEditPipeline.from_pipe(half).model.dtype == torch.bfloat16  # diffusers would cast it to fp32
    own = HydraXEditPipeline.from_pipe(half, model=HydraXPipeline.from_pretrained(checkpoint).model)
    assert own.model.dtype == torch.float32 and half.model.dtype == torch.bfloat16  # a passed model keeps its own
    assert half.dtype == half.model.dtype == torch.bfloat16
    images = half("a fox", generator=seeded(), **kwargs).images
    assert np.isfinite(images).all() and np.abs(images - reference).max() < 8 / 255
    HydraXEditPipeline.from_pipe(half, torch_dtype=torch.float32)  # an asked-for dtype casts the shared model
    assert {p.dtype for p in half.model.parameters()} == {torch.float32}
    np.testing.assert_allclose(half("a fox", generator=seeded(), **kwargs).images, reference, atol=2 / 255)


def test_array_inputs_numpy_integers_and_stale_prompt_embeds(pipe, edit, checkpoint):
    """Arrays and tensors must hold RGB (a grayscale or RGBA array crashed deep inside with unrelated messages; PIL
    images of any mode are converted); numpy integers count as ints, as in diffusers; prompt embeddings encoded
    before `pipe.to(dtype)` are refused, not fed to attention in the wrong dtype."""
    grey, rgba = np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8)
    for bad in (grey, rgba, torch.zeros(1, 32, 32)):
        with pytest.raises(ValueError, match=r"holds RGB pixels .* got shape .* pass a PIL image \(any mode"):
            edit(bad, "make it red", num_inference_steps=1, output_type="latent")
    rgba_image = PIL.Image.fromarray(rgba, "RGBA")
    assert edit(rgba_image, "make it red", num_inference_steps=1, output_type="pt").images.shape == (1, 3, 32, 32)
    kwargs = dict(height=32, width=32, output_type="pt", generator=torch.Generator().manual_seed(0))
    plain = pipe("a red fox", num_inference_steps=2, **kwargs).images
    kwargs["generator"].manual_seed(0)
    numpy = pipe("a red fox", num_inference_steps=np.int64(2), num_images_per_prompt=np.int64(1), **kwargs).images
    torch.testing.assert_close(numpy, plain, rtol=0, atol=0)
    fresh = HydraXPipeline.from_pretrained(checkpoint)  # the shared `pipe` must keep its fp32 weights
    embeds = fresh.encode_prompt("a red fox", guidance_scale=4.0)
    fresh.to(torch.bfloat16)
    message = r"encoded in torch.float32 on cpu, but the pipeline now runs in torch.bfloat16 on cpu: encode"
    with pytest.raises(ValueError, match=message):
        fresh(prompt_embeds=embeds, num_inference_steps=1, output_type="latent", height=32, width=32)


def test_root_components_load_from_the_checkpoint_folder_or_the_hub_snapshots_repo(tmp_path):
    """A component subfolder's checkpoint: its folder, absolute (so "." works), or, in the Hugging Face cache, the
    snapshot's repo at that commit: diffusers downloads only what it needs itself, not the root's transformers code,
    which transformers then fetches into the same snapshot."""
    from modeling_hydrax.pipeline_loading_hydrax import checkpoint_root, revision_kwargs

    assert checkpoint_root("./model") == str(Path.cwd())
    snapshot = tmp_path / "hub" / "models--you--hydrax-7b" / "snapshots" / "0123abc"
    assert checkpoint_root(snapshot / "model") == "you/hydrax-7b"
    expected = {"dtype": "auto", "revision": "0123abc", "cache_dir": str(tmp_path / "hub")}
    assert revision_kwargs(snapshot / "model", {"dtype": "auto"}) == expected
    assert revision_kwargs(tmp_path / "ckpt" / "model", {"dtype": "auto"}) == {"dtype": "auto"}


def test_a_local_folder_named_snapshots_is_not_a_hub_snapshot(tmp_path):
    """Only `models--<org>--<name>/snapshots/<commit>` is read as a Hub snapshot; a local `snapshots` folder is a
    plain checkpoint folder."""
    from modeling_hydrax.pipeline_loading_hydrax import checkpoint_root, revision_kwargs

    folder = tmp_path / "runs" / "snapshots" / "v1"
    assert checkpoint_root(folder / "model") == str(folder)
    assert revision_kwargs(folder / "model", {"dtype": "auto"}) == {"dtype": "auto"}


def test_the_root_model_records_its_pipeline_folder_absolute(checkpoint, monkeypatch):
    """A component folder given relative to the working folder still records the absolute pipeline folder (where
    `save_pretrained` copies the pipeline files from)."""
    from modeling_hydrax.pipeline_loading_hydrax import HydraXRootModel

    monkeypatch.chdir(checkpoint)
    model = HydraXRootModel.from_pretrained("model")
    assert model.hydrax_pipeline_folder == str(Path(checkpoint).resolve())


def test_a_pipeline_from_a_hub_snapshot_loads_and_saves_without_our_packages(pipe, tmp_path):
    """The Hub route, offline: a checkpoint in the Hugging Face cache layout loads through
    `DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)` (the root components from the snapshot's
    repo at its commit) and saves with the snapshot's own pipeline files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--you--hydrax"
    pipe.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = BLOCK_OUR_PACKAGES + textwrap.dedent(
        f"""
        import filecmp, os
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained("you/hydrax", cache_dir={str(tmp_path / "hub")!r},
                                                 trust_remote_code=True)
        assert type(pipe).__name__ == "HydraXPipeline" and pipe.model.name_or_path == "you/hydrax"
        pipe.save_pretrained({str(tmp_path / "resaved")!r})
        snapshot = {str(repo / "snapshots" / commit)!r}
        assert all(filecmp.cmp(os.path.join(snapshot, name), os.path.join({str(tmp_path / "resaved")!r}, name))
                   for name in {list(pipeline_hydrax.PIPELINE_FILES)!r})
        print("ok")
        """
    )
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf_home")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_a_bf16_model_beside_a_float32_tokenizer_runs_every_task_and_from_pipe_keeps_both(checkpoint, pipe):
    """The visual tokenizer kept in float32 next to a bf16 LLM, as a VAE often is (Wan, SDXL's upcast VAE)."""
    mixed = HydraXPipeline.from_pretrained(checkpoint, dtype=torch.bfloat16)
    mixed.set_progress_bar_config(disable=True)
    mixed.model.model.vision_tower.to(torch.float32)
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, output_type="pt")
    image = mixed("a fox", generator=seeded(), **kwargs).images
    torch.testing.assert_close(image, pipe("a fox", generator=seeded(), **kwargs).images, atol=0.05, rtol=0)
    assert mixed("it moves", image=source_image(), num_frames=5, **kwargs).frames.shape == (1, 5, 3, 32, 32)
    edit = HydraXEditPipeline.from_pipe(mixed)
    assert edit.model.model.language_model.dtype == torch.bfloat16, "from_pipe cast the shared LLM"
    assert edit.model.model.vision_tower.dtype == torch.float32
    assert edit(source_image(), "make it red", **kwargs).images.shape == (1, 3, 32, 32)
    config = mixed.model.config
    question = torch.tensor([[5] + visual_block(config, 4) + [6, 7]])
    answer = mixed.model.generate(input_ids=question, pixel_values=source_image()[None] * 2 - 1, max_new_tokens=2)
    assert answer.shape == (1, question.shape[1] + 2)


@pytest.mark.parametrize("stochastic", ["lcm", "euler"])
def test_stochastic_schedulers_draw_their_noise_from_the_generator(pipe, edit, stochastic):
    """FlowMatchLCMScheduler and Euler with `stochastic_sampling` re-noise at every step: from the call's
    `generator`, so a seeded call repeats whatever the global RNG (they drew from it, as diffusers' Flux does)."""
    scheduler = (
        FlowMatchLCMScheduler.from_config(pipe.scheduler.config)
        if stochastic == "lcm"
        else FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    )
    for pipeline, inputs in ((pipe, {"height": 32, "width": 32}), (edit, {"image": source_image()})):
        sampler = type(pipeline).from_pipe(pipeline, scheduler=scheduler)
        outputs = []
        for global_seed in (0, 1):
            torch.manual_seed(global_seed)
            call = sampler(prompt="a fox", generator=seeded(), num_inference_steps=3, output_type="pt", **inputs)
            outputs.append(call.images)
        torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
        differs = sampler(prompt="a fox", generator=seeded(1), num_inference_steps=3, output_type="pt", **inputs)
        assert not torch.equal(differs.images, outputs[0])


def test_each_step_is_one_batched_llm_forward_without_the_lm_head(pipe, edit):
    """Speed by design: the prompt runs once, then each step is one LLM forward holding every guidance branch (CFG:
    2, the edit's dual guidance: 3), the LM head never runs, and an edit's source passes the Sem-ViT once."""
    model, steps = pipe.model, 3
    calls = {"llm": [], "lm_head": 0, "sem_vit": 0}

    def llm(module, args, kwargs):
        calls["llm"].append(kwargs["inputs_embeds"].shape[0])

    def count(name):
        def hook(module, args):
            calls[name] += 1

        return hook

    hooks = [
        model.model.language_model.register_forward_pre_hook(llm, with_kwargs=True),
        model.lm_head.register_forward_pre_hook(count("lm_head")),
        model.model.vision_tower.sem_vit.register_forward_pre_hook(count("sem_vit")),
    ]
    try:
        for pipeline, inputs, branches, sources in (
            (pipe, {"height": 32, "width": 32, "guidance_scale": 4.0}, 2, 0),
            (edit, {"image": source_image(), "guidance_scale": 4.0, "image_guidance_scale": 1.5}, 3, 1),
        ):
            calls.update(llm=[], lm_head=0, sem_vit=0)
            pipeline(prompt="a fox", num_inference_steps=steps, output_type="latent", **inputs)
            assert calls == {"llm": [branches] * (1 + steps), "lm_head": 0, "sem_vit": steps + sources}, calls
    finally:
        for hook in hooks:
            hook.remove()
