"""The command line as users type it: `python -m ntklab ...` in a subprocess."""

import json
import logging
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

from ntklab import results
from ntklab.cli import main
from tests.helpers import ntklab

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["width=32", "data.n_train=16", "data.n_test=8", "data.dim=4", "optim.steps=20", "track.log_steps=5",
         "track.probe_size=8"]


def test_help_lists_the_subcommands(tmp_path):
    out, err, code = ntklab("--help", cwd=tmp_path)
    assert code == 0 and "train" in out and "usage: python -m ntklab" in out
    out, err, code = ntklab("nonsense", cwd=tmp_path)
    assert code == 2 and "unknown command 'nonsense'" in err


def test_train_help_shows_the_config(tmp_path):
    out, err, code = ntklab("train", "--help", cwd=tmp_path)
    assert code == 0, err
    for text in ("python -m ntklab train", "data: cifar10, circle, digits, fashion_mnist, gaussian, mnist, parity, sphere", "width: 1024", "lr_unit: eta_max"):
        assert text in out, text


def test_train_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    out, err, code = ntklab("train", *SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert code == 0, err
    summary = json.loads((run_dir / results.SUMMARY).read_text())
    assert summary["status"] == "ok" and summary["steps_done"] == 20 and summary["device"] in ("cpu", "cuda")
    assert summary["config"]["model"]["width"] == 32 and summary["config"]["data"]["name"] == "sphere"
    records = results.read_metrics(run_dir / results.METRICS)
    assert [r["step"] for r in records] == [0, 1, 2, 4, 9, 20]
    # at width 32 the kernel moves a few percent in 20 steps at 0.5 η_max; 0 would mean no tracking
    assert 1e-4 < records[-1]["kernel_change"] < 1
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / results.CONFIG).exists()
    for plot in ("loss.png", "drift.png"):
        assert (run_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(torch.load(run_dir / results.KERNELS)) >= {"ntk_empirical_init", "ntk_empirical_final", "ntk_analytic"}


def test_diverged_run_exits_zero(tmp_path):
    run_dir = tmp_path / "run"
    out, err, code = ntklab("train", *SMALL, "optim.lr_unit=absolute", "optim.lr=1e4", f"hydra.run.dir={run_dir}",
                            cwd=tmp_path)
    assert code == 0, err
    assert json.loads((run_dir / results.SUMMARY).read_text())["status"] == "diverged"


INVALID = {
    # override → (exit code, texts the message must contain)
    "model.activation=foo": (2, ["model.activation", "relu", "erf"]),
    "data.name=foo": (2, ["data.name", "sphere", "mnist"]),
    "width=0": (2, ["model.width", ">= 1"]),
    "optim.lr=-1": (2, ["optim.lr", "> 0"]),
    "data=mnist": (2, ["data.root", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "data=cifar10": (2, ["data.root", "data_batch_1", "test_batch"]),
    "data=fashion_mnist": (2, ["data.root", "FashionMNIST/raw", "/usr/share/datasets/fashion-mnist"]),
    "track.quantities=[kernel_drift]": (2, ["track.quantities", "kernel_change"]),
    f"seed={2 ** 70}": (2, ["seed", "[0, 2**62 - 1]"]),
    "seed=-1": (2, ["seed", "[0, 2**62 - 1]"]),          # the rule data.seed follows too
    "+foo=1": (2, ["foo", "not a config field", "stop_after"]),
    "model.name=cnn": (2, ["model.name: is 'cnn', but the fields are model=mlp's", "group override model=cnn"]),
    "model.sigma_w=1e30": (2, ["model.sigma_w: the net's outputs at initialisation are not all finite in float"]),
    # 10^12 parameters: more memory than any machine has, refused before allocating
    "width=1000000": (2, ["model.width", "needs at least", "GB"]),
    # Hydra's own errors keep Hydra's message and exit code
    "data=foo": (1, ["data/foo", "digits"]),
    "width=abc": (1, ["width", "abc"]),
}
if not torch.cuda.is_available():
    INVALID["device=cuda"] = (2, ["device", "no CUDA GPU", "cpu"])


@pytest.fixture
def in_process(tmp_path, monkeypatch, capsys):
    """Run ``ntklab.cli.main`` in this process: (exit code, stderr). Hydra adds its job's log handlers
    to the root logger; they are taken off again, so no later test logs into this one's files."""
    monkeypatch.chdir(tmp_path)
    # as tests.helpers' processes: Hydra's short errors, also under a tracer (coverage, a debugger)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setattr(sys, "gettrace", lambda: None)
    handlers, level = logging.root.handlers[:], logging.root.level

    def run(*args):
        try:
            code = main(list(args))
        except SystemExit as exit:
            code = exit.code
        return code, capsys.readouterr().err

    yield run
    for handler in set(logging.root.handlers) - set(handlers):
        logging.root.removeHandler(handler)
        handler.close()
    logging.root.setLevel(level)


def _invalid_args(override, run_dir, data_root):
    args = ["train", *SMALL, override, f"hydra.run.dir={run_dir}"]
    if override.startswith("data=") and override != "data=foo":
        args.append(f"data.root={data_root}")
    return args


@pytest.mark.parametrize("override", list(INVALID))
def test_invalid_values_exit_with_a_short_message(tmp_path, in_process, override):
    # in this process (cli.main as `python -m ntklab` calls it): a process each would take ~2 s of imports
    code, err = in_process(*_invalid_args(override, tmp_path / "run", tmp_path / "no-data-here"))
    expected_code, texts = INVALID[override]
    assert code == expected_code, err
    assert "Traceback" not in err, err
    for text in texts:
        assert text in err, (text, err)
    if code == 2:   # our own messages are one line (Hydra's list the options and the search path)
        assert len(err.strip().splitlines()) == 1, err


def test_the_process_exits_with_mains_code_and_message(tmp_path):
    """`python -m ntklab` itself, for one of our refusals, a missing data file and one of Hydra's errors."""
    overrides = ["model.activation=foo", "data=mnist", "data=foo"]
    processes = {override: ntklab(*_invalid_args(override, tmp_path / str(i), tmp_path / "no-data-here"),
                                  cwd=tmp_path, wait=False) for i, override in enumerate(overrides)}
    for override, process in processes.items():
        out, err = process.communicate(timeout=300)
        code, texts = INVALID[override]
        assert process.returncode == code and "Traceback" not in err, (override, err)
        assert all(text in err for text in texts), (override, err)
        assert code != 2 or len(err.strip().splitlines()) == 1, (override, err)


def test_packages_list_names_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("ntklab", "hydra_plugins") for p in (ROOT / top).rglob("__init__.py")}
    assert listed == found | {"ntklab.configs"}


@pytest.mark.slow
def test_wheel_carries_the_configs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("ntklab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    yaml = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")}
    assert yaml and {f"ntklab/configs/{name}" for name in yaml} <= names
    assert "ntklab/configs/__init__.py" in names
    assert "hydra_plugins/ntklab_launcher/local_launcher.py" in names     # hydra/launcher=local
