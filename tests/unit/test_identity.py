"""PhotoMaker V2 identity in-process: the ID encoder's structure and strict loading, trigger-word expansion, fusion,
ArcFace alignment, the start_merge_step rule in the denoising loop, and the LoRA fused into the UNet."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from portrait.diffusion.trigger import start_merge_step, text_only_prompt
from portrait.errors import InvalidInput, ModelSetError
from portrait.models.identity import IdEncoderConfig, PhotoMakerIdEncoder, clip_pixels, load_id_encoder, read_photomaker_file
from portrait.models.masks import ARCFACE_TEMPLATE
from tests.helpers import sample_photos

# PhotoMaker V2's ID encoder at full size, as TencentARC/PhotoMaker's model_v2.py builds it: CLIP ViT-L/14
# (hidden 1024, 24 layers, MLP 4096, patch 14, 224 px -> 257 positions, projection 768), visual_projection_2
# 1024 -> 1280, QFormerPerceiver(512 -> 2 x 2048 tokens through a 4x MLP, resampler depth 4, 16 heads of 128,
# ff x4, embedding_dim 1024) and FuseModule(2048).
PUBLISHED_SHAPES = {
    "vision_model.embeddings.class_embedding": [1024],
    "vision_model.embeddings.patch_embedding.weight": [1024, 3, 14, 14],
    "vision_model.embeddings.position_embedding.weight": [257, 1024],
    "vision_model.pre_layrnorm.weight": [1024],
    "vision_model.encoder.layers.0.self_attn.q_proj.weight": [1024, 1024],
    "vision_model.encoder.layers.23.mlp.fc1.weight": [4096, 1024],
    "vision_model.encoder.layers.23.mlp.fc2.bias": [1024],
    "vision_model.post_layernorm.bias": [1024],
    "visual_projection.weight": [768, 1024],
    "visual_projection_2.weight": [1280, 1024],
    "qformer_perceiver.token_proj.0.weight": [2048, 512],
    "qformer_perceiver.token_proj.0.bias": [2048],
    "qformer_perceiver.token_proj.2.weight": [4096, 2048],
    "qformer_perceiver.token_norm.weight": [2048],
    "qformer_perceiver.perceiver_resampler.proj_in.weight": [2048, 1024],
    "qformer_perceiver.perceiver_resampler.proj_out.weight": [2048, 2048],
    "qformer_perceiver.perceiver_resampler.norm_out.bias": [2048],
    "qformer_perceiver.perceiver_resampler.layers.3.0.norm1.weight": [2048],
    "qformer_perceiver.perceiver_resampler.layers.3.0.norm2.weight": [2048],
    "qformer_perceiver.perceiver_resampler.layers.3.0.to_q.weight": [2048, 2048],
    "qformer_perceiver.perceiver_resampler.layers.3.0.to_kv.weight": [4096, 2048],
    "qformer_perceiver.perceiver_resampler.layers.3.0.to_out.weight": [2048, 2048],
    "qformer_perceiver.perceiver_resampler.layers.3.1.0.weight": [2048],
    "qformer_perceiver.perceiver_resampler.layers.3.1.1.weight": [8192, 2048],
    "qformer_perceiver.perceiver_resampler.layers.3.1.3.weight": [2048, 8192],
    "fuse_module.mlp1.layernorm.weight": [4096],
    "fuse_module.mlp1.fc1.weight": [2048, 4096],
    "fuse_module.mlp1.fc2.weight": [2048, 2048],
    "fuse_module.mlp2.fc1.bias": [2048],
    "fuse_module.mlp2.fc2.weight": [2048, 2048],
    "fuse_module.layer_norm.weight": [2048],
}
# 392 CLIP vision tensors with projection + 1 projection_2 + 56 qformer_perceiver + 14 fuse_module
PUBLISHED_KEY_COUNT = 463


@pytest.fixture(scope="module")
def full_size_shapes():
    with torch.device("meta"):
        return {k: list(v.shape) for k, v in PhotoMakerIdEncoder(IdEncoderConfig()).state_dict().items()}


def test_full_size_encoder_has_photomaker_v2_names_and_shapes(full_size_shapes):
    assert len(full_size_shapes) == PUBLISHED_KEY_COUNT
    for name, shape in PUBLISHED_SHAPES.items():
        assert full_size_shapes.get(name) == shape, name
    # nothing outside V2's five top-level modules
    assert {k.split(".")[0] for k in full_size_shapes} == {
        "vision_model", "visual_projection", "visual_projection_2", "qformer_perceiver", "fuse_module"}


def test_full_size_state_dict_loads_strictly(full_size_shapes):
    state = {k: torch.zeros(shape, dtype=torch.float16) for k, shape in full_size_shapes.items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(257)[None]  # as older transformers saved it
    encoder = load_id_encoder(state, IdEncoderConfig())
    assert sum(p.numel() for p in encoder.parameters()) > 500_000_000
    assert encoder.vision_model.embeddings.position_ids.reshape(-1).tolist() == list(range(257))


def test_renamed_or_reshaped_key_is_named(full_size_shapes):
    state = {k: torch.empty(shape, device="meta") for k, shape in full_size_shapes.items()}
    state["fuse_module.mlp1.fc_1.weight"] = state.pop("fuse_module.mlp1.fc1.weight")
    with pytest.raises(ModelSetError, match=r"missing keys \(1\): fuse_module\.mlp1\.fc1\.weight.*"
                                            r"unexpected keys \(1\): fuse_module\.mlp1\.fc_1\.weight"):
        load_id_encoder(state, IdEncoderConfig(), "photomaker-v2.bin")
    state = {k: torch.empty(shape, device="meta") for k, shape in full_size_shapes.items()}
    state["visual_projection_2.weight"] = torch.empty(1280, 768, device="meta")
    with pytest.raises(ModelSetError, match=r"wrong shapes \(1\): visual_projection_2\.weight \[1280, 768\]"):
        load_id_encoder(state, IdEncoderConfig())


def test_file_forms_and_wrong_files(models_dir, tmp_path):
    from safetensors.torch import save_file

    state = read_photomaker_file(models_dir / "photomaker" / "photomaker-v2.bin")
    flat = {f"{part}.{k}": v.contiguous() for part, d in state.items() for k, v in d.items()}
    save_file(flat, str(tmp_path / "photomaker-v2.safetensors"))
    again = read_photomaker_file(tmp_path / "photomaker-v2.safetensors")
    for part in state:
        assert set(again[part]) == set(state[part])
        assert all(torch.equal(again[part][k], state[part][k]) for k in state[part])
    torch.save({"id_encoder": state["id_encoder"]}, tmp_path / "v1.bin")
    with pytest.raises(ModelSetError, match="expected the keys id_encoder and lora_weights"):
        read_photomaker_file(tmp_path / "v1.bin")


@pytest.fixture(scope="module")
def text(sdxl_dir):
    from portrait.models.sdxl import TextEncoders

    return TextEncoders(sdxl_dir)


@pytest.fixture(scope="module")
def encoder(models_dir):
    path = models_dir / "photomaker" / "photomaker-v2.bin"
    return load_id_encoder(read_photomaker_file(path)["id_encoder"], IdEncoderConfig.read(path.parent))


def test_trigger_expansion_repeats_the_class_token(text):
    enc = text.with_trigger("portrait of a woman img, oil painting", num_id_images=2)
    # BOS portrait of a [woman x 4] , oil painting EOS: the class token sits at 4..7
    assert enc.class_tokens_mask[0].nonzero().reshape(-1).tolist() == [4, 5, 6, 7]
    assert enc.token_count == 12
    # "woman" is one CLIP token, so the expansion encodes exactly like the words written out four times
    written = text(["portrait of a woman woman woman woman, oil painting"])
    assert torch.allclose(enc.embeds, written.embeds, atol=1e-6)
    assert torch.allclose(enc.pooled, written.pooled, atol=1e-6)


@pytest.mark.parametrize("prompt, message", [
    ("portrait of a woman, oil painting", "needs the trigger word 'img' right after the class word"),
    ("a woman img and a man img", "once, found it 2 times"),
    ("img portrait", "must follow a class word"),
    ("a, " * 37 + "woman img", "must be among the first 73 tokens"),
])
def test_trigger_errors(text, prompt, message):
    with pytest.raises(InvalidInput, match=message) as error:
        text.with_trigger(prompt, num_id_images=2)
    assert error.value.field == "prompt"



@pytest.mark.parametrize("prompt", ["portrait of a woman, oil painting", "a woman img and a man img", "img portrait"])
def test_trigger_checked_on_text_and_tokens_says_the_same(text, prompt):
    """The clients check the text, the text encoder the tokens: one rule (diffusion/trigger.py), one message."""
    with pytest.raises(InvalidInput) as on_text:
        text_only_prompt(prompt)
    with pytest.raises(InvalidInput) as on_tokens:
        text.with_trigger(prompt, num_id_images=2)
    assert str(on_text.value) == str(on_tokens.value)

def test_text_only_prompt():
    assert text_only_prompt("portrait of a woman img, oil painting") == "portrait of a woman, oil painting"
    for prompt, message in (("a woman", "needs the trigger word 'img'"), ("a man img, a woman img", "2 times"),
                            ("img, a woman", "must follow a class word")):
        with pytest.raises(InvalidInput, match=message):
            text_only_prompt(prompt)


def test_fusion_changes_only_class_positions_and_depends_on_the_photo(text, encoder, models_dir):
    from portrait.models.faces import FaceEmbedder, HaarFaceDetector

    detector, embedder = HaarFaceDetector(), FaceEmbedder(models_dir / "insightface" / "w600k_r50.onnx")
    enc = text.with_trigger("portrait of a woman img, oil painting", num_id_images=1)
    fused = []
    with torch.no_grad():
        for photo in sample_photos():
            faces = detector(photo, 1)
            arcface, _ = embedder(photo, faces.keypoints[:1])
            assert arcface.shape == (1, 512)
            fused.append(encoder(clip_pixels([photo], 224), enc.embeds, enc.class_tokens_mask, torch.from_numpy(arcface)))
        again = encoder(clip_pixels([sample_photos()[0]], 224), enc.embeds, enc.class_tokens_mask,
                        torch.from_numpy(embedder(sample_photos()[0], detector(sample_photos()[0], 1).keypoints[:1])[0]))
    changed = (fused[0] - enc.embeds).abs().amax(-1)[0] > 0
    assert changed.nonzero().reshape(-1).tolist() == [4, 5]  # 2 identity tokens for 1 photo
    assert torch.equal(fused[0], again)  # deterministic
    assert (fused[0] - fused[1])[0, 4:6].abs().max() > 1e-3  # another person, other tokens
    assert torch.equal(fused[0][0, 6:], fused[1][0, 6:])


def test_alignment_puts_the_keypoints_on_the_arcface_template(models_dir):
    """A dot drawn at each keypoint of a rotated, scaled, shifted face lands on its 112x112 ArcFace template point."""
    from portrait.models.faces import FaceEmbedder

    embedder = FaceEmbedder(models_dir / "insightface" / "w600k_r50.onnx")
    angle, scale, shift = np.deg2rad(25.0), 2.7, np.array([150.0, 40.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    keypoints = (ARCFACE_TEMPLATE @ rotation.T) * scale + shift  # [5, 2] in a 480x400 photo
    for point, target in zip(keypoints, ARCFACE_TEMPLATE):
        photo = np.zeros((400, 480, 3), np.uint8)
        cv2.circle(photo, tuple(int(v) for v in np.round(point * 16)), 8 * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
        aligned = embedder.align(photo, keypoints[None])[0]
        assert aligned.shape == (112, 112, 3)
        weight = aligned[..., 0].astype(float)
        ys, xs = np.mgrid[:112, :112]
        centre = np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()
        assert np.abs(centre - target).max() < 1.0, (centre, target)


def test_start_merge_step_rule():
    assert start_merge_step(20, 50) == 10  # PhotoMaker's demo default
    assert start_merge_step(100, 50) == 30  # capped at 30
    assert start_merge_step(0, 10) == 0
    assert start_merge_step(35, 6) == 2


def test_denoise_uses_text_only_embeddings_up_to_start_merge_step():
    """PhotoMaker's loop: steps i <= start_merge_step see the text-only rows, later steps the fused ones."""
    from portrait.diffusion.loop import Conditioning, denoise_steps
    from portrait.diffusion.schedules import make_scheduler
    from portrait.models.tiny import SDXL_SCHEDULER_CONFIG

    text, fused, negative = torch.zeros(1, 77, 8), torch.ones(1, 77, 8), torch.full((1, 77, 8), -1.0)
    pooled, fused_pooled = torch.zeros(1, 4), torch.ones(1, 4)
    cond = Conditioning(text, pooled, negative, -torch.ones(1, 4), torch.zeros(1, 6), fused, fused_pooled, 2)
    steps = denoise_steps(make_scheduler(SDXL_SCHEDULER_CONFIG, 6), torch.zeros(1, 4, 8, 8), cond,
                          [True] * 4 + [False] * 2, 5.0)
    seen, call = [], next(steps)
    while True:
        seen.append((call.encoder_hidden_states[-1].mean().item(), call.text_embeds[-1].mean().item(),
                     call.encoder_hidden_states[0].mean().item()))
        try:
            call = steps.send(torch.zeros_like(call.sample))
        except StopIteration:
            break
    assert [s[0] for s in seen] == [0, 0, 0, 1, 1, 1]  # the conditional row: text-only at 0..2, fused from 3
    assert [s[1] for s in seen] == [0, 0, 0, 1, 1, 1]  # pooled follows
    assert [s[2] for s in seen[:4]] == [-1, -1, -1, -1]  # guided steps keep the negative rows first


def test_photomaker_lora_is_fused_as_diffusers_fuses_it(sdxl_dir, models_dir):
    from diffusers import StableDiffusionXLPipeline

    from portrait.models.sdxl import load_unet

    path = models_dir / "photomaker" / "photomaker-v2.bin"
    plain, fused = load_unet(sdxl_dir).state_dict(), load_unet(sdxl_dir, "cpu", path).state_dict()
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    pipe.load_lora_weights(read_photomaker_file(path)["lora_weights"], adapter_name="photomaker")  # PhotoMaker's way
    pipe.fuse_lora()
    reference = {k.replace("base_layer.", ""): v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    assert set(fused) == set(plain) == set(reference)  # a plain UNet: no adapter modules left
    changed = [k for k in plain if not torch.equal(plain[k], fused[k])]
    assert len(changed) == 4 * sum(1 for k in plain if k.endswith("attn1.to_q.weight") or k.endswith("attn2.to_q.weight"))
    assert all(torch.allclose(fused[k], reference[k], atol=1e-6) for k in fused)


def test_id_images_bytes_helper_roundtrip():
    from clients.triton import face_identities, identity_arrays

    photo = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo, format="PNG")
    arrays = identity_arrays(face_identities([photo.getvalue(), photo.getvalue()]))
    assert arrays["id_images"][0] == "BYTES" and arrays["id_images"][1].shape == (2,)
    assert arrays["id_images"][1].tolist() == [photo.getvalue()] * 2
    assert identity_arrays(face_identities(None)) == {}
    with pytest.raises(InvalidInput, match="at most 4 identity photos"):
        face_identities([photo.getvalue()] * 5)
