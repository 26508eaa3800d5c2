"""The SLURM batch files run as written: their setup wires SLURM's variables into torchrun's c10d
rendezvous and the Dask scheduler address, and every command they start parses with its own parser
(torchrun's, Dask's click commands, the `losh` Typer app). srun, scontrol, torchrun, dask and losh
are stubs on PATH that record their arguments and environment."""
import os
import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest
import typer
from distributed.cli.dask_scheduler import main as dask_scheduler_cli
from distributed.cli.dask_worker import main as dask_worker_cli
from torch.distributed.run import get_args_parser

from losh.cli.main import app

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "scripts" / "slurm"
PROGRAMS = ("torchrun", "dask", "losh")

STUB = r"""#!/bin/bash
name=$(basename "$0")
record=$(mktemp "$STUB_LOG/XXXXXXXX")
printf '%s\0' "$name" "$@" > "$record.args"
env > "$record.env"
rm -f "$record"
case "$name" in
  scontrol) [ "$1 $2" = "show hostnames" ] && tr ',' '\n' <<< "$3" ;;
  srun) while [ $# -gt 0 ]; do case "$1" in torchrun|dask|losh) exec "$@" ;; esac; shift; done; exit 9 ;;
  dask) [ "$1" = worker ] && touch "$STUB_LOG/worker-started"
        if [ "$1" = scheduler ]; then
          while [ $# -gt 0 ]; do [ "$1" = --scheduler-file ] && echo '{"address": "tcp://x:1"}' > "$2"; shift; done
        fi ;;
  # like the real one, `compute-flows --scheduler` waits for a worker to join
  losh) if [[ " $* " == *" --scheduler "* ]]; then
          for _ in $(seq 200); do [ -e "$STUB_LOG/worker-started" ] && break; sleep 0.05; done
        fi ;;
esac
exit 0
"""


def run_script(script: Path, tmp_path: Path, **env: str) -> list[tuple[list[str], dict]]:
    """Run a batch file under fake SLURM variables; the recorded (argv, environment) of each stub call."""
    stubs, log = tmp_path / "bin", tmp_path / "log"
    stubs.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    for old in log.iterdir():
        old.unlink()
    for name in ("srun", "scontrol", *PROGRAMS):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-a,gpu-b,gpu-c", "SLURM_NNODES": "3",
             "SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_PER_TASK": "32"}
    full_env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(tmp_path), "STUB_LOG": str(log), **slurm, **env}
    result = subprocess.run(["bash", str(script)], env=full_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    calls = []
    for args in sorted(log.glob("*.args"), key=lambda p: p.stat().st_mtime_ns):
        argv = args.read_bytes().decode().split("\0")[:-1]
        environ = dict(line.split("=", 1) for line in args.with_suffix(".env").read_text().splitlines() if "=" in line)
        calls.append((argv, environ))
    return calls


def command_lines(script: Path) -> list[list[str]]:
    """Every command line of a script that starts torchrun, dask or losh, directly or through srun
    (continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", script.read_text())
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("#") or line.startswith("echo"):
            continue
        words = shlex.split(line.rstrip("&"), comments=True)
        if words and words[0] == "srun":
            starts = [i for i, w in enumerate(words) if w in PROGRAMS]
            assert starts, f"{script.name}: srun starts none of {PROGRAMS}: {line}"
            words = words[starts[0]:]
        if words and words[0] in PROGRAMS:
            lines.append(words)
    return lines


def check_losh(argv: list[str]) -> click.Context:
    """Parse a `losh` command line (without `losh`) with the Typer app, as the console script would."""
    group = typer.main.get_command(app)
    command = group.get_command(click.Context(group), argv[0])
    assert command is not None, f"no losh command {argv[0]!r}"
    return command.make_context(argv[0], list(argv[1:]))


def check_dask(argv: list[str]) -> click.Context:
    cli = {"scheduler": dask_scheduler_cli, "worker": dask_worker_cli}[argv[0]]
    return cli.make_context(f"dask {argv[0]}", list(argv[1:]))


def only(calls, name: str, *first: str) -> list[tuple[list[str], dict]]:
    return [(argv[1:], env) for argv, env in calls if argv[0] == name and argv[1:1 + len(first)] == list(first)]


def test_train_sbatch_starts_torchrun_c10d_on_every_node(tmp_path):
    prep, run = tmp_path / "prep", tmp_path / "run"
    prep.mkdir()
    calls = run_script(SLURM / "train.sbatch", tmp_path, PREP=str(prep), RUN=str(run))
    (srun_argv, _), = only(calls, "srun")
    assert "--kill-on-bad-exit=1" in srun_argv and srun_argv[srun_argv.index("torchrun") - 1] == "--kill-on-bad-exit=1"
    (argv, env), = only(calls, "torchrun")
    args = get_args_parser().parse_args(argv)
    assert (args.nnodes, args.nproc_per_node, args.rdzv_backend) == ("3", "4", "c10d")
    assert (args.rdzv_endpoint, args.rdzv_id) == ("gpu-a:29500", "4242")   # the allocation's first node
    assert args.module and args.training_script == "losh.cli.main"
    assert env["MASTER_ADDR"] == "gpu-a" and env["MASTER_PORT"] == "29500" and env["LOSH_MAX_OPEN_SHARDS"] == "64"
    ctx = check_losh(args.training_script_args)
    assert ctx.info_name == "train" and ctx.params["data"] == str(prep) and ctx.params["out"] == run
    assert ctx.params["config"] == "losh-m" and ctx.params["workers"] == 8   # 32 CPUs / 4 GPUs
    assert ctx.params["resume"] is False

    # a second submission with a checkpoint in RUN continues the run; the port and config are settable
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    calls = run_script(SLURM / "train.sbatch", tmp_path, PREP=str(prep), RUN=str(run), RDZV_PORT="29611",
                       CONFIG="losh-m:wo-fbc", SLURM_NNODES="2", SLURM_JOB_NODELIST="n7,n9")
    (argv, env), = only(calls, "torchrun")
    args = get_args_parser().parse_args(argv)
    assert (args.nnodes, args.rdzv_endpoint, env["MASTER_ADDR"]) == ("2", "n7:29611", "n7")
    ctx = check_losh(args.training_script_args)
    assert ctx.params["resume"] is True and ctx.params["config"] == "losh-m:wo-fbc"


def test_train_sbatch_refuses_to_start_without_prep(tmp_path):
    stubs = tmp_path / "bin"
    stubs.mkdir()
    result = subprocess.run(["bash", str(SLURM / "train.sbatch")], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "SLURM_JOB_NODELIST": "a", "SLURM_JOB_ID": "1"})
    assert result.returncode != 0 and "PREP: set PREP to the prepared data set" in result.stderr


def test_flows_sbatch_starts_a_dask_cluster_and_compute_flows_on_it(tmp_path):
    prep = tmp_path / "prep"
    prep.mkdir()
    calls = run_script(SLURM / "flows.sbatch", tmp_path, PREP=str(prep))
    (scheduler_argv, _), = only(calls, "dask", "scheduler")
    ctx = check_dask(scheduler_argv)
    assert ctx.params["port"] == "8786" and ctx.params["scheduler_file"] == str(prep / "flows" / ".dask-scheduler-4242.json")
    (srun_scheduler, _), (srun_workers, _) = only(calls, "srun")
    assert srun_scheduler[srun_scheduler.index("--nodelist") + 1] == "gpu-a"   # the scheduler runs on the first node
    (worker_argv, _), = only(calls, "dask", "worker")
    ctx = check_dask(worker_argv)
    assert ctx.params["scheduler"] == "tcp://gpu-a:8786" and ctx.params["n_workers"] == "32"
    assert ctx.params["nthreads"] == 1
    losh = [argv for argv, _ in only(calls, "losh")]
    assert len(losh) == 2
    ctx = check_losh(losh[0])
    assert ctx.info_name == "compute-flows" and ctx.params["data"] == prep and ctx.params["prep"] is None
    assert ctx.params["scheduler"] == "tcp://gpu-a:8786" and ctx.params["split"] == "train"
    assert check_losh(losh[1]).params["verify"] is True

    calls = run_script(SLURM / "flows.sbatch", tmp_path, PREP=str(prep), SPLIT="all", DASK_PORT="9000",
                       SLURM_CPUS_PER_TASK="8")
    assert check_losh(only(calls, "losh")[0][0]).params["split"] == "all"
    assert check_dask(only(calls, "dask", "worker")[0][0]).params["n_workers"] == "8"
    assert check_dask(only(calls, "dask", "scheduler")[0][0]).params["port"] == "9000"


@pytest.mark.parametrize("script", sorted(SLURM.glob("*.sbatch")), ids=lambda p: p.name)
def test_every_command_line_of_the_scripts_ran_and_parses(script, tmp_path):
    """Each torchrun/dask/losh line written in the file is one the stubs saw (none hides in a branch)."""
    prep = tmp_path / "prep"
    prep.mkdir()
    written = command_lines(script)
    assert written
    calls = run_script(script, tmp_path, PREP=str(prep), RUN=str(tmp_path / "run"))
    ran = [argv for argv, _ in calls if argv[0] in PROGRAMS]
    assert sorted(w[:2] for w in written) == sorted(r[:2] for r in ran)   # background steps: any order
    for argv in ran:
        if argv[0] == "losh":
            check_losh(argv[1:])
        elif argv[0] == "dask":
            check_dask(argv[1:])
        else:
            check_losh(get_args_parser().parse_args(argv[1:]).training_script_args)
    header = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert header and all(re.fullmatch(r"#SBATCH --[a-z-]+=\S+", line) for line in header), header
    assert os.access(script, os.R_OK)
