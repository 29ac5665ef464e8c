"""The full-size set's builder (`portrait weights --full-size`): published dimensions checked on `meta` models
(no weights written), and its streaming writer checked end to end at toy width through the project's loaders."""

import json

import pytest
import torch

from portrait.models.identity import (
    IdEncoderConfig,
    PhotoMakerIdEncoder,
    load_id_encoder,
    read_photomaker_file,
)
from portrait.models.tiny import (
    FULL_PARAMETER_COUNTS,
    FULL_TEXT_ENCODER_2_CONFIG,
    FULL_TEXT_ENCODER_CONFIG,
    FULL_UNET_CONFIG,
    FULL_VAE_CONFIG,
    PHOTOMAKER_LORA_RANK,
    full_sdxl_modules,
    photomaker_lora_shapes,
    seeded_state,
    tiny_id_encoder_config,
    write_full_photomaker,
    write_full_sdxl,
)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def full():
    return full_sdxl_modules("meta")


def test_sdxl_modules_have_the_published_parameter_counts(full):
    assert {name: count(m) for name, m in full.items()} == FULL_PARAMETER_COUNTS
    assert abs(count(full["unet"]) / 2.567e9 - 1) < 1e-3 and abs(count(full["text_encoder_2"]) / 695e6 - 1) < 1e-3


def test_sdxl_dimensions_agree_with_each_other(full):
    unet, vae = full["unet"].config, full["vae"].config
    te1, te2 = full["text_encoder"].config, full["text_encoder_2"].config
    assert (te1.hidden_size, te2.hidden_size, te2.projection_dim) == (768, 1280, 1280)
    assert unet.cross_attention_dim == te1.hidden_size + te2.hidden_size == 2048  # penultimate states concatenated
    # added conditioning: 6 time ids of 256 each + the pooled 1280 projection
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + te2.projection_dim == 2816
    assert (vae.scaling_factor, vae.force_upcast, vae.latent_channels) == (0.13025, True, unet.in_channels)
    assert unet.sample_size * 2 ** (len(vae.block_out_channels) - 1) == 1024


def test_photomaker_v2_dimensions_fit_sdxl(full):
    with torch.device("meta"):
        encoder = PhotoMakerIdEncoder(IdEncoderConfig())
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)  # CLIP ViT-L/14
    assert shapes["vision_model.embeddings.position_embedding.weight"] == (257, 1024)  # 224 / 14 = 16, 16 x 16 + 1
    assert sum(k.endswith("self_attn.q_proj.weight") for k in shapes) == 24
    assert shapes["qformer_perceiver.token_proj.0.weight"] == (2048, 512)  # ArcFace 512 x ratio 4
    assert shapes["qformer_perceiver.token_proj.2.weight"] == (2 * 2048, 2048)  # 2 tokens of SDXL's text width
    assert shapes["qformer_perceiver.perceiver_resampler.proj_in.weight"] == (2048, 1024)
    assert shapes["fuse_module.mlp1.fc1.weight"] == (2048, 2 * 2048)
    assert IdEncoderConfig().cross_attention_dim == full["unet"].config.cross_attention_dim


def test_photomaker_lora_keys_reach_every_attention_projection_at_rank_64(full):
    """The real file's attention-processor key format, converted by diffusers' own loader to PEFT targets that exist
    in SDXL's UNet with the right widths (key-level check; the toy test below fuses for real)."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    unet = full["unet"]
    shapes = photomaker_lora_shapes(unet)
    assert len(shapes) == 140 * 4 * 2  # 70 transformer blocks x (attn1, attn2) x (q, k, v, out) x (down, up)
    key = "unet.down_blocks.2.attentions.1.transformer_blocks.9.attn2.processor.to_k_lora"
    assert shapes[f"{key}.down.weight"] == (PHOTOMAKER_LORA_RANK, 2048) and shapes[f"{key}.up.weight"] == (1280, PHOTOMAKER_LORA_RANK)
    peft = convert_unet_state_dict_to_peft({k.removeprefix("unet."): torch.empty(s, device="meta") for k, s in shapes.items()})
    assert len(peft) == len(shapes)
    for name, tensor in peft.items():
        path, _, part = name.rpartition(".lora_")
        linear = unet.get_submodule(path)
        assert isinstance(linear, torch.nn.Linear), name
        expected = (PHOTOMAKER_LORA_RANK, linear.in_features) if part.startswith("A") else (linear.out_features, PHOTOMAKER_LORA_RANK)
        assert tuple(tensor.shape) == expected, name
    assert sum(t.numel() for t in peft.values()) == 92_897_280


def test_seeded_state_is_deterministic_and_ordered_by_key():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4))
    a = {k: make() for k, _, make in seeded_state(model, 1)}
    b = {k: make() for k, _, make in reversed(list(seeded_state(model, 1)))}
    assert all(torch.equal(a[k], b[k]) for k in a) and a["0.weight"].dtype == torch.float16
    assert not torch.equal(a["0.weight"], next(make() for k, _, make in seeded_state(model, 2) if k == "0.weight"))
    assert torch.equal(a["1.weight"], torch.ones(4, dtype=torch.float16)) and not a["1.bias"].any()
    assert 0.2 < a["0.weight"].float().std() * 8 ** 0.5 < 2  # LeCun-normal


# the same structure as the published configs at toy width: the writer and loaders see what they see at full size
TOY = {
    "unet": dict(FULL_UNET_CONFIG, block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4],
                 transformer_layers_per_block=[1, 1, 2], norm_num_groups=16, cross_attention_dim=96,
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 64, sample_size=32),
    "vae": dict(FULL_VAE_CONFIG, block_out_channels=[8, 16, 32, 32], norm_num_groups=8, sample_size=256),
    "text_encoder": dict(FULL_TEXT_ENCODER_CONFIG, hidden_size=32, intermediate_size=128, num_attention_heads=4,
                         num_hidden_layers=3, projection_dim=32),
    "text_encoder_2": dict(FULL_TEXT_ENCODER_2_CONFIG, hidden_size=64, intermediate_size=256, num_attention_heads=4,
                           num_hidden_layers=3, projection_dim=64),
}


def test_written_set_loads_through_the_project_loaders(tmp_path):
    from safetensors import safe_open

    from portrait.models.checkpoint import read_sdxl_info
    from portrait.models.sdxl import TextEncoders, load_unet, load_vae

    sdxl = write_full_sdxl(tmp_path / "sdxl", seed=7, configs=TOY)
    index = json.loads((sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    with safe_open(str(sdxl / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert {t.dtype for t in stored.values()} == {torch.float16}
    photomaker = write_full_photomaker(tmp_path / "photomaker", TOY["unet"], seed=7, id_config=tiny_id_encoder_config(),
                                       rank=4)

    unet = load_unet(sdxl, photomaker_file=photomaker / "photomaker-v2.bin")  # the LoRA fuses in
    assert unet.dtype == torch.float32
    plain = load_unet(sdxl)
    for key in ("conv_in.weight", "add_embedding.linear_1.weight", "up_blocks.0.resnets.0.conv1.weight"):
        assert torch.equal(plain.state_dict()[key], stored[key].float()), key
    fused = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.equal(unet.state_dict()[fused], plain.state_dict()[fused])
    assert load_vae(sdxl).dtype == torch.float32
    text = TextEncoders(sdxl)
    assert [e.dtype for e in text.encoders] == [torch.float32] * 2  # the files and config say float16
    enc = text(["a portrait"])
    assert enc.embeds.shape == (1, 77, 96) and enc.pooled.shape == (1, 64) and torch.isfinite(enc.embeds).all()
    assert read_sdxl_info(sdxl).default_size == 256

    state = read_photomaker_file(photomaker / "photomaker-v2.bin")
    encoder = load_id_encoder(state["id_encoder"], IdEncoderConfig.read(photomaker))
    assert next(encoder.parameters()).dtype == torch.float32



def test_unet_storage_halves_the_weights_and_keeps_the_prediction(sdxl_dir, photomaker_file):
    """PORTRAIT_UNET_STORAGE=float16: the weights stay fp16 (loaded, LoRA fused, kept), computed in fp32; equal to
    diffusers' own fp16 load + fuse + layerwise casting, and within fp16 rounding of the fp32 UNet."""
    from diffusers import StableDiffusionXLPipeline

    from portrait.diffusion.loop import UNetCall
    from portrait.errors import ModelSetError
    from portrait.models.sdxl import load_unet, predict_noise

    full = load_unet(sdxl_dir, photomaker_file=photomaker_file)
    half = load_unet(sdxl_dir, photomaker_file=photomaker_file, storage="float16")
    big = [p for p in half.parameters() if p.ndim >= 2]
    assert {p.dtype for p in big} == {torch.float16} and half.dtype == torch.float32
    assert {p.dtype for m in half.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()} == {torch.float32}
    c = full.config
    g = torch.Generator().manual_seed(0)
    call = UNetCall(torch.randn(2, 4, 16, 16, generator=g), torch.tensor([999.0, 500.0]),
                    torch.randn(2, 77, c.cross_attention_dim, generator=g),
                    torch.randn(2, c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim, generator=g),
                    torch.tensor([[256.0, 256, 0, 0, 256, 256]] * 2), 0, 1)
    out = predict_noise(half, call)
    assert out.dtype == torch.float32 and 0 < (out - predict_noise(full, call)).abs().max() < 2e-2

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir, torch_dtype=torch.float32)
    pipe.unet = pipe.unet.to(torch.float16)
    pipe.load_lora_weights(read_photomaker_file(photomaker_file)["lora_weights"], adapter_name="photomaker")
    pipe.fuse_lora()
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.float16, compute_dtype=torch.float32, skip_modules_pattern=())
    for module in pipe.unet.modules():  # diffusers casts convolutions, linear and embedding layers, not the norms
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            module.float()
    assert torch.equal(predict_noise(pipe.unet, call), out)
    with pytest.raises(ModelSetError, match="PORTRAIT_UNET_STORAGE"):
        load_unet(sdxl_dir, storage="int8")
