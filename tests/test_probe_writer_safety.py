import pytest

from frankeneval.errors import FrankenevalError
from frankeneval.miniature.world import write_vision_probes


def test_probe_writer_never_replaces_a_folder_it_did_not_write(tmp_path):
    write_vision_probes(tmp_path, n_per_task=2, tasks=["counting"])
    write_vision_probes(tmp_path, n_per_task=3, tasks=["counting"])  # its own earlier output: replaced
    assert len((tmp_path / "counting" / "data.jsonl").read_text().splitlines()) == 3
    (tmp_path / "counting" / "notes.txt").write_text("mine")
    with pytest.raises(FrankenevalError, match="did not write"):
        write_vision_probes(tmp_path, n_per_task=2, tasks=["counting"])
    assert (tmp_path / "counting" / "notes.txt").read_text() == "mine"
    user = tmp_path / "u"
    (user / "ocr").mkdir(parents=True)
    (user / "ocr" / "thesis.tex").write_text("x")
    with pytest.raises(FrankenevalError):
        write_vision_probes(user, n_per_task=2, tasks=["ocr"])
    assert (user / "ocr" / "thesis.tex").read_text() == "x"
