"""One request schema (portrait/params.py): the config.pbtxt files, the clients, the CLI and the sweep all agree with it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from portrait import params as P

ROOT = Path(__file__).resolve().parents[2]
REPOSITORIES = (ROOT / "model_repository", ROOT / "ensembles")  # served side by side (two --model-repository)
CONFIG_TYPES = {"INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "FP32": "TYPE_FP32", "BYTES": "TYPE_STRING", "BOOL": "TYPE_BOOL"}
# the inputs of each public model that are not request parameters, written out here as well as in params.MODELS
EXTRA_INPUTS = {"stage1": set(), "face_detailer": {"image", "id_images", "id_groups", "face_prompts"},
                "portrait": {"detail", "id_images", "id_groups", "face_prompts"}}


def config_inputs(text: str) -> dict[str, tuple[str, list[int], bool]]:
    """{name: (TYPE_..., dims, optional)} of a config.pbtxt's inputs."""
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    names = [i.name for i in config.input]
    assert len(names) == len(set(names)), f"an input is declared twice: {names}"
    return {i.name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.optional) for i in config.input}


def expected_inputs(model: str) -> dict[str, tuple[str, list[int], bool]]:
    schema = P.MODELS[model]
    defaults = {k: v for cls in schema.params for k, v in P.field_defaults(cls).items()}
    expected = {name: (CONFIG_TYPES[datatype], [1], name in defaults) for name, datatype in schema.types.items()}
    for extra in schema.extra:
        expected[extra.name] = (CONFIG_TYPES[extra.triton], [-1] if extra.batched else [1], extra.optional)
    return expected


def mismatches(model: str, text: str) -> list[str]:
    """What a config.pbtxt declares differently from the schema (empty: they agree)."""
    found, expected = config_inputs(text), expected_inputs(model)
    problems = [f"{name}: in the schema, not in the config" for name in expected if name not in found]
    problems += [f"{name}: in the config, not in the schema" for name in found if name not in expected]
    for name in expected.keys() & found.keys():
        (want_type, want_dims, want_optional), (got_type, got_dims, got_optional) = expected[name], found[name]
        if got_type != want_type:
            problems.append(f"{name}: data_type {got_type}, the schema says {want_type}")
        if got_dims != want_dims:
            problems.append(f"{name}: dims {got_dims}, the schema says {want_dims}")
        if got_optional != want_optional:
            problems.append(f"{name}: optional {got_optional}, the schema says {want_optional} "
                            f"({'has' if want_optional else 'has no'} default)")
    return problems


def config_text(model: str) -> str:
    return next(r / model / "config.pbtxt" for r in REPOSITORIES if (r / model).is_dir()).read_text()


@pytest.mark.parametrize("model", sorted(P.MODELS))
def test_config_inputs_are_the_schema(model):
    assert mismatches(model, config_text(model)) == []


@pytest.mark.parametrize("model", sorted(P.MODELS))
def test_extra_inputs_are_the_listed_ones(model):
    """The inputs that are not parameters are exactly those named here: nothing slips in as an 'extra'."""
    assert {i.name for i in P.MODELS[model].extra} == EXTRA_INPUTS[model]
    assert not EXTRA_INPUTS[model] & set(P.MODELS[model].fields)


def test_every_model_taking_a_seed_has_a_schema():
    """The models a user calls take `seed`; the internal ones (denoise: `seeds`, tensors) are not request schemas."""
    public = {d.name for r in REPOSITORIES for d in r.iterdir()
              if (d / "config.pbtxt").is_file() and "seed" in config_inputs((d / "config.pbtxt").read_text())}
    assert public == set(P.MODELS)


HAND_EDITS = [  # (model, a hand edit of its config, what the check must report)
    ("stage1", lambda t: t.replace('name: "steps", data_type: TYPE_INT32', 'name: "steps", data_type: TYPE_INT64'),
     "steps: data_type TYPE_INT64"),
    ("stage1", lambda t: t.replace('name: "seed", data_type: TYPE_INT64, dims: [ 1 ], optional: true',
                                   'name: "seed", data_type: TYPE_INT64, dims: [ 1 ]'), "seed: optional False"),
    ("stage1", lambda t: t.replace('  { name: "batch_size", data_type: TYPE_INT32, dims: [ 1 ], optional: true }\n', "")
     .replace('optional: true },\n]', 'optional: true }\n]'), "batch_size: in the schema, not in the config"),
    ("face_detailer", lambda t: t.replace('  { name: "margin"', '  { name: "blur", data_type: TYPE_FP32, dims: [ 1 ], '
                                          'optional: true },\n  { name: "margin"'), "blur: in the config, not in the schema"),
    ("face_detailer", lambda t: t.replace('name: "prompt", data_type: TYPE_STRING, dims: [ 1 ] }',
                                          'name: "prompt", data_type: TYPE_STRING, dims: [ 1 ], optional: true }'),
     "prompt: optional True"),
    ("portrait", lambda t: t.replace('name: "work_size", data_type: TYPE_INT32, dims: [ 1 ]',
                                     'name: "work_size", data_type: TYPE_INT32, dims: [ -1 ]'), "work_size: dims [-1]"),
    ("portrait", lambda t: t.replace('  { name: "guidance_scale"', '  { name: "batch_size", data_type: TYPE_INT32, '
                                     'dims: [ 1 ], optional: true },\n  { name: "guidance_scale"'),
     "batch_size: in the config, not in the schema"),
]


@pytest.mark.parametrize("model,edit,report", HAND_EDITS, ids=[r for _, _, r in HAND_EDITS])
def test_a_config_edited_by_hand_fails(model, edit, report):
    text = config_text(model)
    edited = edit(text)
    assert edited != text, "the edit no longer applies to the config: update this case"
    assert any(problem.startswith(report) for problem in mismatches(model, edited)), mismatches(model, edited)


def test_request_fields_defaults_and_types():
    assert P.request_fields(P.Stage1Params) == ("prompt", "negative_prompt", "steps", "guidance_scale", "guidance_cutoff",
                                                "seed", "width", "height", "batch_size")
    assert "prompt" not in P.field_defaults(P.DetailParams)  # required
    for cls in (P.Stage1Params, P.DetailParams):
        made = cls(prompt="a portrait")
        assert {n: getattr(made, n) for n in P.field_defaults(cls)} == P.field_defaults(cls)
        assert set(P.triton_types(cls)) == set(P.request_fields(cls))
        assert set(P.triton_types(cls).values()) <= set(P.TRITON_TYPES)
    assert P.MODELS["portrait"].fields == P.model_fields("portrait")
    assert "batch_size" not in P.model_fields("portrait")


def test_limits_come_from_the_schema():
    assert P.field_limits(P.Stage1Params, "steps") == (P.STEPS_MIN, P.STEPS_MAX)
    assert P.limits_text(P.DetailParams, "margin") == "[0, 2]"
    with pytest.raises(P.InvalidInput, match=re.escape("steps: must be in [1, 150], got 151")):
        P.Stage1Params(prompt="a", steps=151)
    with pytest.raises(P.InvalidInput, match=re.escape("work_size: must be a multiple of 8 in [64, 2048], got 100")):
        P.DetailParams(prompt="a", work_size=100)
    with pytest.raises(P.InvalidInput, match="prompt: must not be empty"):
        P.DetailParams(prompt=" ")


def test_stage2_takes_the_sampling_fields_of_stage1():
    base = P.Stage1Params(prompt="a woman img", negative_prompt="blur", steps=7, guidance_scale=3.0, guidance_cutoff=0.5,
                          seed=9, width=512, height=768)
    detail = P.detail_params_for(base, strength=0.5, work_size=256)
    assert detail == P.DetailParams(prompt="a woman img", negative_prompt="blur", steps=7, guidance_scale=3.0,
                                    guidance_cutoff=0.5, seed=9, strength=0.5, work_size=256)
    assert P.stage1_params_for(base, with_identity=False) is base
    assert P.stage1_params_for(base, with_identity=True) == dataclasses.replace(base, prompt="a woman")


# --- the front ends derive from it -----------------------------------------------------------------------------------

class FakeClient:
    """TritonClient's request building without a server: records what each call would send."""

    def __new__(cls):
        from clients.triton import TritonClient

        client = TritonClient.__new__(TritonClient)
        client.sent = {}

        def infer(model, arrays, outputs):
            client.sent[model] = arrays
            if model == "stage1":
                return {"images": np.zeros((1, 64, 64, 3), np.uint8), "seeds": np.array([0]),
                        "truncated_tokens": np.array([0])}
            return {"image": np.zeros((64, 64, 3), np.uint8), "mask": np.zeros((64, 64), np.uint8),
                    "boxes": np.zeros((0, 4), np.float32), "faces_found": np.array([0])}

        def stream(model, arrays, outputs):
            client.sent[model] = arrays
            image = np.zeros((64, 64, 3), np.uint8)
            yield {"base_image": image, "image": image, "mask": image[..., 0], "boxes": np.zeros((0, 4), np.float32),
                   "seed": np.array([0]), "truncated_tokens": np.array([0])}

        client.infer, client.stream = infer, stream
        return client


def assert_sends_config_inputs(arrays: dict, model: str, absent: set[str]) -> None:
    declared = config_inputs(config_text(model))
    assert set(arrays) == set(declared) - absent
    for name, (datatype, array) in arrays.items():
        assert CONFIG_TYPES[datatype] == declared[name][0], name
        assert list(array.shape) == declared[name][1] or declared[name][1] == [-1], name


def test_the_client_sends_every_config_input_with_its_type():
    client = FakeClient()
    base = P.Stage1Params(prompt="a woman img", width=64, height=64, steps=2)
    detail = P.detail_params_for(base, work_size=64)
    client.stage1(base)
    assert_sends_config_inputs(client.sent["stage1"], "stage1", set())
    client.detail(b"png", detail, identities=[[b"face"], [b"face 2", b"face 3"]], face_prompts=["a man img", ""])
    assert_sends_config_inputs(client.sent["face_detailer"], "face_detailer", set())
    assert client.sent["face_detailer"]["id_groups"][1].tolist() == [0, 1, 1]
    client.detail(b"png", detail, [b"face"])  # one identity: today's request, id_groups says so
    assert_sends_config_inputs(client.sent["face_detailer"], "face_detailer", {"face_prompts"})
    client.portrait(base, detail, identities=[[b"face"], [b"face 2"]], face_prompts=["a man img", "a woman img"])
    assert_sends_config_inputs(client.sent["portrait"], "portrait", set())
    client.portrait(base, None)
    assert_sends_config_inputs(client.sent["portrait"], "portrait", set(P.MODELS["portrait"].fields_of(P.DetailParams))
                               - set(P.request_fields(P.SamplingParams)) | {"id_images", "id_groups", "face_prompts"})


def test_http_twin_runs_the_portrait_models_stages():
    """Stage 1 on the prompt without its trigger word; stage 2 with stage 1's sampling fields (as the BLS model)."""
    client = FakeClient()
    base = P.Stage1Params(prompt="a woman img, studio", width=64, height=64, steps=4, seed=5)
    detail = P.DetailParams(prompt="ignored", steps=9, seed=1, strength=0.5, work_size=64)  # as the portrait model
    client.portrait_in_two_requests(base, detail, [b"face"])
    assert client.sent["stage1"]["prompt"][1][0] == b"a woman, studio"
    sent = client.sent["face_detailer"]
    assert sent["prompt"][1][0] == b"a woman img, studio"
    assert (sent["steps"][1][0], sent["seed"][1][0], sent["strength"][1][0]) == (4, 5, np.float32(0.5))


def test_client_type_tables_are_the_schema():
    from clients.triton import DETAIL_TYPES, STAGE1_TYPES

    assert STAGE1_TYPES == P.triton_types(P.Stage1Params)
    assert DETAIL_TYPES == P.triton_types(P.DetailParams)


# the CLI's deliberate differences: None means "the checkpoint's native size" / "the agent's negative prompt"
CLI_NOT_SCHEMA = {"generate": {"negative_prompt": None, "width": None, "height": None},
                  "detail": {"work_size": None, "negative_prompt": ""}}
CLI_FIELDS = {"generate": (P.Stage1Params, ("strength", "max_faces", "margin", "style_strength", "assign")),
              "detail": (P.DetailParams, ())}


@pytest.mark.parametrize("command,argv", [("generate", ["generate", "--prompt", "p"]),
                                          ("detail", ["detail", "--image", "x.png", "--prompt", "p"])])
def test_cli_defaults_are_the_schema(command, argv):
    from portrait.app.cli import build_parser

    args = vars(build_parser().parse_args(argv))
    cls, stage2 = CLI_FIELDS[command]
    fields = [n for n in P.request_fields(cls) if n != "prompt"] + list(stage2)
    expected = {**P.field_defaults(cls), **P.field_defaults(P.DetailParams)}
    for name in fields:
        want = CLI_NOT_SCHEMA[command].get(name, expected[name])
        assert args[name] == want and type(args[name]) is type(want), (name, args[name], want)


def test_cli_options_parse_to_the_schema_types():
    from portrait.app.cli import build_parser

    args = build_parser().parse_args(["generate", "--prompt", "p", "--steps", "3", "--guidance", "2", "--seed", "7",
                                      "--width", "64", "--margin", "1"])
    assert (args.steps, args.guidance_scale, args.seed, args.width, args.margin) == (3, 2.0, 7, 64, 1.0)
    assert type(args.guidance_scale) is float and type(args.margin) is float and type(args.seed) is int


def test_sweep_keys_are_the_portrait_models_fields():
    from portrait.app.sweep import DETAIL_FIELDS, PARAMETERS, STAGE1_FIELDS

    portrait = P.MODELS["portrait"]
    assert set(PARAMETERS) == set(portrait.fields) - {"prompt", "seed"} | {"detail"}
    assert "detail" in {i.name for i in portrait.extra}
    assert len(PARAMETERS) == len(set(PARAMETERS))
    assert set(STAGE1_FIELDS) <= set(P.request_fields(P.Stage1Params))
    assert set(DETAIL_FIELDS) <= set(P.request_fields(P.DetailParams)) - set(P.request_fields(P.SamplingParams))
