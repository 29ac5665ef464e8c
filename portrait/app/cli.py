"""`portrait` command line: serve | generate | detail | sweep | ui | weights (| prompt, from the prompt agent)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import time
from pathlib import Path

from PIL import Image

from portrait.errors import InvalidInput, PortraitError

SCHEMA_DEFAULT = object()  # add_field_argument: the dataclass's default
PYTHON_TYPES = {"BYTES": str, "INT32": int, "INT64": int, "FP32": float}


def add_field_argument(p, cls, name: str, help: str, flag: str | None = None, default=SCHEMA_DEFAULT,
                       default_help: str | None = None, **kwargs) -> None:
    """An option for request field `name` of params class `cls`, read into args.<name>: its type, default and limits
    from the schema (portrait/params.py), the limits and the default written into `help`."""
    from portrait import params as P

    datatype = P.triton_types(cls)[name]
    default = P.field_defaults(cls).get(name) if default is SCHEMA_DEFAULT else default
    flag = flag or "--" + name.replace("_", "-")
    if P.field_choices(cls, name):
        kwargs["choices"] = P.field_choices(cls, name)
    if datatype != "BYTES":  # "{limits}" in `help` places them; else they go at its end
        limits = P.limits_text(cls, name)
        help = help.format(limits=limits) if "{limits}" in help else f"{help} in {limits}"
    if default_help is not None:
        help += f" (default: {default_help})"
    elif default not in (None, ""):
        help += " (default: %(default)s)"
    p.add_argument(flag, dest=name, metavar=flag[2:].replace("-", "_").upper(), type=PYTHON_TYPES[datatype],
                   default=default, help=help, **kwargs)


def add_sampling_arguments(p, cls, seed_help: str) -> None:
    """What every diffusion request has (SamplingParams) but the prompts."""
    add_field_argument(p, cls, "steps", "denoising steps (Align-Your-Steps schedule)")
    add_field_argument(p, cls, "guidance_scale", "CFG scale in {limits}; <= 1 disables CFG", flag="--guidance")
    add_field_argument(p, cls, "guidance_cutoff", "fraction of final steps without CFG")
    add_field_argument(p, cls, "seed", seed_help)


def add_stage1_arguments(p: argparse.ArgumentParser) -> None:
    from portrait import params as P

    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="SDXL prompt")
    source.add_argument("--idea", help="a short idea ('corporate confidence'): the prompt agent writes the prompt")
    # None, not the schema's "": with --idea the agent's negative prompt is used unless one is given
    add_field_argument(p, P.Stage1Params, "negative_prompt", "negative prompt (empty: zero embeddings, as SDXL; "
                       "with --idea: the agent's unless given)", default=None)
    # None, not the schema's 1024: the checkpoint's native size (as the server's default)
    for name in ("width", "height"):
        add_field_argument(p, P.Stage1Params, name, f"multiple of {P.SIZE_MULTIPLE}", default=None,
                           default_help="the model's native size")
    add_sampling_arguments(p, P.Stage1Params, "in {limits}; image i of the batch uses seed + i")
    add_field_argument(p, P.Stage1Params, "batch_size", "images, one generator each")


def add_stage2_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """Stage 2's own fields (DetailParams) but work_size."""
    from portrait import params as P

    add_field_argument(p, P.DetailParams, "strength", prefix + "how far the faces are re-noised in {limits} (the last "
                       "steps x strength steps run)")
    add_field_argument(p, P.DetailParams, "max_faces", f"{prefix}largest faces first")
    add_field_argument(p, P.DetailParams, "margin", f"{prefix}context around each face, fraction of its size")


def add_identity_arguments(p: argparse.ArgumentParser) -> None:
    from portrait import params as P
    from portrait.diffusion.trigger import TRIGGER_WORD

    p.add_argument("--face", type=Path, action="append", default=[], metavar="PHOTO",
                   help=f"identity photo (repeat, up to {P.MAX_ID_IMAGES}): PhotoMaker V2 puts this person's identity "
                        f"into the detailed face; the prompt must then hold '<class word> {TRIGGER_WORD}'")
    p.add_argument("--identity", action="append", default=[], metavar="PHOTO[,PHOTO...]",
                   help=f"instead of --face, several people: one option per person (up to {P.MAX_IDENTITIES}), each "
                        f"1-{P.MAX_ID_IMAGES} photos separated by commas; each person gets one face (--assign)")
    p.add_argument("--face-prompt", dest="face_prompts", action="append", default=[], metavar="TEXT",
                   help=f"a prompt per --identity, in order (each with '<class word> {TRIGGER_WORD}'; '' = --prompt); "
                        "without identity photos: one per face, largest first")
    add_field_argument(p, P.DetailParams, "assign", "which face gets which identity: order (the k-th identity to the "
                       "k-th face: largest first, then left to right, top to bottom) or match (each to the face most "
                       "like it, by ArcFace cosine similarity)")
    add_field_argument(p, P.DetailParams, "style_strength",
                       "identity: %% of the stage-2 steps run on the text alone before the identity merges in "
                       "(PhotoMaker's start_merge_step; higher: more style, less likeness)")


def read_input(path: Path, field: str) -> bytes:
    """A file the user named, or InvalidInput naming the request field it is for."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidInput(field, f"cannot be read ({path}): {error.strerror}") from None


def read_identities(args):
    """--face (one person) or --identity (several) and --face-prompt -> FaceIdentities, checked as the server does."""
    from portrait.params import FaceIdentities

    if args.face and args.identity:
        raise InvalidInput("id_images", "give one person's photos (--face) or several people (--identity), not both")
    groups = [args.face] if args.face else [[Path(p) for p in spec.split(",") if p] for spec in args.identity]
    return FaceIdentities(tuple(tuple(read_input(path, "id_images") for path in group) for group in groups),
                          tuple(args.face_prompts))


def identity_table(boxes, check) -> str:
    """Which face got whom and how close it came: one line per face, the ArcFace cosine similarity to every
    identity before -> after detailing (* marks the face's own identity)."""
    k = check.similarity.shape[1]
    lines = []
    for f, box in enumerate(boxes):
        given = int(check.face_identity[f])
        who = f"identity {given + 1}" if given >= 0 and k else (f"prompt {given + 1}" if given >= 0 else "none")
        cells = "  ".join(f"{j + 1}: {check.similarity_before[f, j]:+.3f} -> {check.similarity[f, j]:+.3f}"
                          + ("*" if j == given else " ") for j in range(k))
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        lines.append(f"  face {f + 1} [{x0}, {y0}, {x1}, {y1}] -> {who:<10}  {cells}".rstrip())
    header = "faces (box, what each got" + (", ArcFace cosine to each identity before -> after):" if k else "):")
    return "\n".join([header, *lines])


def request_values(args, cls, *skip: str) -> dict:
    """args.<field> for each request field of `cls` (add_field_argument's dests) but `skip`."""
    from portrait.params import request_fields

    return {name: getattr(args, name) for name in request_fields(cls) if name not in skip}


@contextlib.contextmanager
def server_client(url: str | None, protocol: str):
    """A client for the server at `url`, or for an embedded server started (and stopped) here if none answers."""
    from clients import connect
    from portrait.serving.server import TritonServer
    from portrait.settings import get_settings

    settings = get_settings()
    url = url or (settings.url if protocol == "grpc" else f"localhost:{settings.http_port}")
    client = connect(url, protocol)
    if client.is_ready():
        yield client
        client.close()
        return
    client.close()
    print(f"no server answers at {url}; starting an embedded one ...", file=sys.stderr)
    with TritonServer.create(settings, free_ports=True) as server:
        with connect(server.grpc_url if protocol == "grpc" else server.http_url, protocol) as embedded:
            yield embedded


def generate_one(client, params, detail, protocol: str, people=None):
    """One portrait: the streaming `portrait` model with a progress bar (gRPC), or the same two stages as plain
    requests (HTTP has no streaming; TritonClient.portrait_in_two_requests). `people`: FaceIdentities."""
    who = {} if people is None else {"identities": [list(g) for g in people.photos],
                                     "face_prompts": list(people.face_prompts)}
    if protocol != "grpc":
        return client.portrait_in_two_requests(params, detail, **who)
    from tqdm import tqdm

    bars: dict = {}

    def progress(stage: str, step: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=f"{stage:>6}", unit="step", leave=True, file=sys.stderr)
        bars[stage].update(step - bars[stage].n)

    try:
        return client.portrait(params, detail, progress, **who)
    finally:
        for bar in bars.values():
            bar.close()


def cmd_generate(args) -> int:
    from portrait.models.checkpoint import read_sdxl_info
    from portrait.params import DetailParams, Stage1Params, detail_params_for
    from portrait.settings import get_settings

    size = read_sdxl_info(get_settings().sdxl_dir).default_size
    prompt, negative = args.prompt, args.negative_prompt
    people = read_identities(args)
    faces = people.count
    if (people.count or people.face_prompts) and args.no_detail:
        raise InvalidInput("id_images", "need stage 2: --face, --identity and --face-prompt cannot go with --no-detail")
    if args.idea is not None:
        from portrait.diffusion.trigger import TRIGGER_WORD
        from prompt_agent import PromptAgentError, build_prompt

        try:
            agent = build_prompt(args.idea, class_word=args.class_word if faces else None,
                                 trigger=TRIGGER_WORD if faces else None)
        except PromptAgentError as error:
            raise InvalidInput("idea", str(error)) from None
        prompt, negative = agent.prompt, agent.negative_prompt if negative is None else negative
        print(f"prompt: {prompt}\nnegative prompt: {negative}", file=sys.stderr)
    params = Stage1Params(prompt=prompt, negative_prompt=negative or "", width=args.width or size,
                          height=args.height or size, **request_values(args, Stage1Params, "prompt", "negative_prompt",
                                                                        "width", "height"))
    # stage 2: the sampling fields are stage 1's; its own from the options, the crop at the native size
    detail = None if args.no_detail else detail_params_for(
        params, work_size=size, **request_values(args, DetailParams, *Stage1Params.__dataclass_fields__, "work_size"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with server_client(args.url, args.protocol) as client:
        for i, seed in enumerate(params.seeds):
            path = args.out if i == 0 else args.out.with_name(f"{args.out.stem}_{i}{args.out.suffix}")
            one = dataclasses.replace(params, seed=seed, batch_size=1)
            out = generate_one(client, one, detail and dataclasses.replace(detail, seed=seed), args.protocol, people)
            Image.fromarray(out.image).save(path)
            print(f"{path}  (seed {seed})")
            if detail is not None:
                for name, image in (("base", out.base_image), ("mask", out.mask)):
                    Image.fromarray(image).save(path.with_name(f"{path.stem}_{name}{path.suffix}"))
                print(f"  base {path.with_name(path.stem + '_base' + path.suffix)}, mask "
                      f"{path.with_name(path.stem + '_mask' + path.suffix)}; "
                      + (f"{len(out.boxes)} face(s) detailed" if len(out.boxes) else "no face found in the base image"))
                if len(out.boxes) and (people.count or people.face_prompts):
                    print(identity_table(out.boxes, out.identity))
    if out.truncated_tokens:
        print(f"note: the prompt was {out.truncated_tokens} CLIP tokens over the 77-token limit; those were dropped",
              file=sys.stderr)
    return 0


def cmd_detail(args) -> int:
    from portrait.models.checkpoint import read_sdxl_info
    from portrait.params import DetailParams
    from portrait.settings import get_settings

    params = DetailParams(negative_prompt=args.negative_prompt or "",
                          work_size=args.work_size or read_sdxl_info(get_settings().sdxl_dir).default_size,
                          **request_values(args, DetailParams, "negative_prompt", "work_size"))
    data = read_input(args.image, "image")
    people = read_identities(args)
    people.check_with(params.max_faces, params.assign, params.prompt)
    with server_client(args.url, args.protocol) as client:
        out = client.detail(data, params, identities=[list(g) for g in people.photos],
                            face_prompts=list(people.face_prompts))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out.image).save(args.out)
    mask_path = args.out.with_name(f"{args.out.stem}_mask{args.out.suffix}")
    Image.fromarray(out.mask).save(mask_path)
    print(f"{args.out}\n{mask_path}")
    print(f"{out.faces_found} face(s) detailed" if out.faces_found else "no face found: the image is unchanged",
          file=sys.stderr)
    if out.faces_found and (people.count or people.face_prompts):
        from portrait.app.production import identity_record, label_faces

        faces_path = args.out.with_name(f"{args.out.stem}_faces{args.out.suffix}")
        label_faces(out.image, identity_record(out.boxes, out.identity)).save(faces_path)
        print(f"{faces_path}  (each face's box, identity and similarity)")
        print(identity_table(out.boxes, out.identity))
    return 0


def cmd_sweep(args) -> int:
    from tqdm import tqdm

    from portrait.app.store import open_store
    from portrait.app.sweep import parse_sweep, run_sweep
    from portrait.models.checkpoint import read_sdxl_info
    from portrait.settings import get_settings

    text = read_input(args.file, "sweep").decode("utf-8", errors="replace")
    sweep = parse_sweep(text, args.file.parent, read_sdxl_info(get_settings().sdxl_dir).default_size)
    print(f"sweep {sweep.name}: {len(sweep.rows)} rows x {len(sweep.columns)} columns = {sweep.size} portraits",
          file=sys.stderr)
    store = open_store()
    with server_client(args.url, "grpc") as client, tqdm(total=sweep.size, unit="portrait", file=sys.stderr) as bar:
        record = run_sweep(client, store, sweep, lambda done, total, what: (bar.set_postfix_str(what[-40:]),
                                                                            bar.update(done - bar.n)))
    print(f"{len(record['productions'])} productions in {store.backend}; contact sheet {store.backend}/"
          f"{record['contact_sheet']}")
    return 0


def stop_on_signals() -> list:
    """A list that SIGINT / SIGTERM append to (lock-free: a handler that takes a lock, such as Event.set, deadlocks
    when a second signal lands while the main thread holds that lock)."""
    received: list = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _frame: received.append(number))
    return received


UI_GRACE_PERIOD = 10.0  # seconds from SIGTERM / Ctrl-C to the exit of `portrait ui` (docs/ui.md)
# An embedded Triton gets this long after its SIGTERM, then SIGKILL: its own shutdown waits up to 30 s for the models
# to unload (measured here: still running 30 s after SIGTERM), which a UI's server has no use for; the kill and the
# shared-memory clean-up after it take about 3 s on 2 cores.
UI_TRITON_GRACE = 5.0


def cmd_ui(args) -> int:
    """Streamlit on `args.port`; an embedded Triton server too when none answers at PORTRAIT_URL. SIGTERM or Ctrl-C
    stops both at once and exits within UI_GRACE_PERIOD (Triton killed after UI_TRITON_GRACE, Streamlit at the end)."""
    import os
    import subprocess

    from clients import connect
    from portrait.serving.server import Aborted, TritonServer
    from portrait.settings import PROJECT_ROOT, get_settings

    settings = get_settings()
    url = args.url or settings.url
    server = app = None
    with connect(url) as probe:
        ready = probe.is_ready()
    stop = stop_on_signals()  # before the embedded server's start: a signal during it stops it too
    if not ready:
        print(f"no server answers at {url}; starting an embedded one ...", file=sys.stderr)
        try:  # as long as `portrait serve` waits for a loaded machine's start (Supervisor's start_timeout)
            server = TritonServer.create(settings, free_ports=True).start(600.0, abort=lambda: bool(stop))
        except Aborted:
            return 0
        url = server.grpc_url
    try:
        if not stop:
            command = [sys.executable, "-m", "streamlit", "run", str(PROJECT_ROOT / "ui" / "app.py"), "--server.port",
                       str(args.port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
            print(f"portrait UI on http://localhost:{args.port}  (Triton at {url}; Ctrl-C stops)", flush=True)
            app = subprocess.Popen(command, env={**os.environ, "PORTRAIT_URL": url})
        while not stop and app.poll() is None:
            time.sleep(0.2)
    finally:
        # Streamlit and Triton stop side by side, not one after the other
        deadline = time.monotonic() + UI_GRACE_PERIOD - 1  # 1 s for a kill of Streamlit after it
        if app is not None and app.poll() is None:
            app.terminate()
        if server is not None:
            server.stop(timeout=UI_TRITON_GRACE)
        if app is not None:
            try:
                app.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait()
    return 0 if stop else (app.returncode or 0)


def cmd_serve(args) -> int:
    """tritonserver under the supervisor (portrait/serving/server.py: watchdog, truthful health, drain on SIGTERM)."""
    import dataclasses as dc

    from portrait.logs import setup_logging
    from portrait.serving.server import Supervisor, TritonServer
    from portrait.settings import get_settings

    settings = get_settings()
    overrides = {k: v for k, v in (("host", args.host), ("health_port", args.health_port),
                                   ("grace_period", args.grace_period)) if v is not None}
    settings = dc.replace(settings, **overrides)
    server = TritonServer.create(settings)
    banner = (f"models from {settings.models_dir}; log {server.log_path}; bound to {settings.host}; the "
              f"model-repository, shared-memory, logging and trace APIs need the X-Portrait-Key header "
              f"({'PORTRAIT_API_KEY' if settings.api_key else 'a random key: set PORTRAIT_API_KEY to use them'}); "
              f"Ctrl-C / SIGTERM drains and stops")
    setup_logging("portrait serve", sys.stdout)  # the supervisor's lines; tritonserver's own log is `server.log_path`
    supervisor = Supervisor(server, settings.health_port, exit_on_failure=args.exit_on_failure, banner=banner)
    return supervisor.run()


def cmd_weights(args) -> int:
    from portrait.models.tiny import build_full_model_set, build_tiny_model_set
    from portrait.settings import get_settings

    if args.full_size is not None:  # SDXL base 1.0 + PhotoMaker V2 at real dimensions, random weights (~8 GB)
        print(build_full_model_set(args.full_size, force=args.force))
        return 0
    print(build_tiny_model_set(get_settings().models_dir, force=args.force))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from portrait.params import DetailParams

    parser = argparse.ArgumentParser(prog="portrait", description="Face-identity portraits served by NVIDIA Triton")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the Triton server with model_repository/, supervised")
    serve.add_argument("--host", default=None, help="address to bind HTTP, gRPC, metrics and health to "
                       "(default PORTRAIT_HOST, 127.0.0.1; 0.0.0.0 opens it to the network)")
    serve.add_argument("--health-port", type=int, default=None, help="truthful /v2/health/{live,ready} "
                       "(default PORTRAIT_HEALTH_PORT, 8003)")
    serve.add_argument("--grace-period", type=float, default=None, help="seconds SIGTERM lets in-flight requests "
                       "finish (default PORTRAIT_GRACE_PERIOD, 30)")
    serve.add_argument("--exit-on-failure", action="store_true", help="a dead or wedged model worker ends the "
                       "supervisor with exit code 3 (container mode) instead of restarting Triton")
    serve.set_defaults(func=cmd_serve)

    gen = sub.add_parser("generate", help="text -> image through Triton (starts an embedded server if none answers)")
    add_stage1_arguments(gen)
    gen.add_argument("--out", type=Path, default=Path("out/portrait.png"),
                     help="final PNG; also <out>_base.png and <out>_mask.png (batch: _1, _2 ... suffixes)")
    gen.add_argument("--no-detail", action="store_true", help="stage 1 only: skip face detailing")
    add_stage2_arguments(gen, "stage 2: ")
    add_identity_arguments(gen)
    gen.add_argument("--class-word", default="person", help="with --idea and --face: the class word the agent puts "
                     "before the trigger word (woman, man, person, ...)")
    gen.add_argument("--url", default=None, help="server host:port (default: PORTRAIT_URL)")
    gen.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    gen.set_defaults(func=cmd_generate)

    detail = sub.add_parser("detail", help="stage 2 on any image: detect faces, re-diffuse them, paste back")
    detail.add_argument("--image", type=Path, required=True, help="PNG/JPEG; gray and RGBA are converted to RGB")
    add_field_argument(detail, DetailParams, "prompt", "SDXL prompt for the faces", required=True)
    add_field_argument(detail, DetailParams, "negative_prompt", "negative prompt (empty: zero embeddings, as SDXL)")
    add_sampling_arguments(detail, DetailParams, "in {limits}; face i uses seed + i")
    add_stage2_arguments(detail)
    # None, not the schema's 1024: the checkpoint's native size (as the server's default)
    add_field_argument(detail, DetailParams, "work_size", "crop side the face is magnified to", default=None,
                       default_help="the model's native size")
    add_identity_arguments(detail)
    detail.add_argument("--out", type=Path, default=Path("out/detail.png"), help="also writes <out>_mask.png (and with "
                        "identities <out>_faces.png: each face's box labelled with its identity and similarity)")
    detail.add_argument("--url", default=None)
    detail.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    detail.set_defaults(func=cmd_detail)

    sweep = sub.add_parser("sweep", help="run a YAML sweep (faces x ideas x parameter grid x seeds) into the store")
    sweep.add_argument("file", type=Path, help="sweep YAML (see portrait/app/sweep.py and docs/ui.md)")
    sweep.add_argument("--url", default=None, help="gRPC host:port (default: PORTRAIT_URL; embedded server if none)")
    sweep.set_defaults(func=cmd_sweep)

    ui = sub.add_parser("ui", help="the Streamlit front end (Create, Gallery, Sweep); starts Triton if none answers")
    ui.add_argument("--port", type=int, default=8501)
    ui.add_argument("--url", default=None, help="gRPC host:port (default: PORTRAIT_URL)")
    ui.set_defaults(func=cmd_ui)

    weights = sub.add_parser("weights", help="build the tiny seeded default model set under PORTRAIT_MODELS")
    weights.add_argument("--force", action="store_true")
    weights.add_argument("--full-size", type=Path, metavar="DIR", default=None,
                         help="instead: SDXL base 1.0 + PhotoMaker V2 at their published dimensions with seeded random "
                              "weights (fp16, about 8 GB) and InsightFace-shaped ONNX, into DIR (e.g. weights/full)")
    weights.set_defaults(func=cmd_weights)

    try:
        from prompt_agent.cli import register
    except ImportError:
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PortraitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
