"""Named Hydra-X configurations: the paper's 7B model, its 1.5B ablation model, and a tiny one for tests.

They live in Python rather than in JSON files beside the package so that a checkpoint carrying this code for
`trust_remote_code=True` has them too (remote code copies only `.py` modules).
"""

import copy


QWEN2_5_SPECIAL_TOKEN_IDS = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "pad_token_id": 151643,
}


def qwen2_5_text_config(vocab_size, hidden_size, intermediate_size, heads, kv_heads, max_positions, tied, eos) -> dict:
    """A Qwen2.5 language model's `text_config` (28 layers, rope θ 1e6, Qwen2.5's BOS/pad ids)."""
    return {
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": 28,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": tied,
        "bos_token_id": 151643,
        "eos_token_id": eos,
        "pad_token_id": 151643,
    }


HYDRAX_PRESETS = {
    # Qwen2.5-7B-Instruct + a SigLIP 2 so400m-sized Hydra-XTok (the tokenizer config's defaults).
    "hydrax-7b": {
        "text_config": qwen2_5_text_config(152064, 3584, 18944, 28, 4, 32768, tied=False, eos=151645),
        "vision_config": {},
        **QWEN2_5_SPECIAL_TOKEN_IDS,
    },
    # Qwen2.5-1.5B + the same tokenizer.
    "hydrax-1.5b": {
        "text_config": qwen2_5_text_config(151936, 1536, 8960, 12, 2, 131072, tied=True, eos=151643),
        "vision_config": {},
        **QWEN2_5_SPECIAL_TOKEN_IDS,
    },
    # Fits `processing_hydrax.build_tiny_qwen2_tokenizer()` (1,024 tokens, Qwen2.5's special tokens at the end).
    "tiny": {
        "text_config": {
            "model_type": "qwen2",
            "vocab_size": 1024,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-06,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "tie_word_embeddings": False,
            "eos_token_id": 1004,
            "pad_token_id": 1002,
        },
        "vision_config": {
            "hidden_size": 32,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "num_gen_layers": 2,
            "gen_fold_layer": 1,
            "num_sem_layers": 2,
            "num_decoder_layers": 2,
            "decoder_unfold_layer": 1,
            "latent_channels": 8,
            "position_embedding_size": 4,
        },
        "flow_head_num_layers": 2,
        "image_token_id": 1014,
        "video_token_id": 1015,
        "vision_start_token_id": 1011,
        "vision_end_token_id": 1012,
        "pad_token_id": 1002,
    },
}


def preset_kwargs(name: str) -> dict:
    """A fresh copy of preset `name`'s `HydraXConfig` keyword arguments (callers may change it freely)."""
    if name not in HYDRAX_PRESETS:
        raise ValueError(f"Unknown preset {name!r}; available presets: {sorted(HYDRAX_PRESETS)}.")
    return copy.deepcopy(HYDRAX_PRESETS[name])


__all__ = ["HYDRAX_PRESETS", "preset_kwargs"]
