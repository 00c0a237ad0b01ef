"""benchmarks/ae_pretraining_probe.py: it watches the real pretraining loop step by step."""
import pytest

from bench import registry
from methods.dec import DEC
from tests.helpers import benchmark_script

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def probe_script():
    return benchmark_script("ae_pretraining_probe")


def test_probe_watches_the_first_steps_of_the_real_loop(probe_script):
    data = registry.datasets.get("digits-reversed")().load()
    rows = {}
    for output in ("tanh", "linear"):
        method = DEC(output=output, width=0.125, batch_size=128)
        inp = method.prepare_input(data.clustering_input())
        rows[output] = probe_script.probe(inp, method.params, seed=3, steps=6)
    for output, r in rows.items():
        assert [row["step"] for row in r] == list(range(6))
        assert all(row["code_norm"] > 0 and row["grad_code"] > 0 for row in r)  # a live start
        assert all((row["saturated"] is None) == (output == "linear") for row in r)
    # same initialisation and first batch: the encoder's first code does not depend on the
    # reconstruction layer, its gradient does
    assert rows["tanh"][0]["code_norm"] == rows["linear"][0]["code_norm"]
    assert rows["tanh"][0]["grad_code"] != rows["linear"][0]["grad_code"]
    again = probe_script.probe(inp, method.params, seed=3, steps=6)
    assert again == rows["linear"]  # deterministic on the CPU


def test_probe_rejects_bad_input_in_one_line(probe_script, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRCLUSTERBENCH_OFFLINE", "1")  # the missing files must not be fetched
    for argv, text in ((["--outputs", "sigmoid"], "unknown output 'sigmoid'; accepted: tanh, linear"),
                       (["--steps", "0"], "--steps must be a positive integer"),
                       (["--dataset", "mnist-usps", "--data-dir", str(tmp_path)], "not found")):
        with pytest.raises(SystemExit) as exc:
            probe_script.main(argv)
        assert exc.value.code == 2 and text in capsys.readouterr().err
