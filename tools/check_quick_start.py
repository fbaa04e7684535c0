"""Runs one of the README's quick-start commands as written, on a fresh clone, with only
the system's own Python (Debian's or Ubuntu's `python3`) on the PATH.

    python3 tools/check_quick_start.py --command=tests [--workdir=/tmp/quick_start]
    python3 tools/check_quick_start.py --command=main

`main` is the README's first command (install, prepare Fashion-MNIST, train the small
variant); `tests` its second (install and run the tests). The clone is of this
checkout's HEAD; the command runs in it under `bash -e`, as root (it calls apt-get),
with PATH=/usr/sbin:/usr/bin:/sbin:/bin and no PYTHON* or PYENV* variables, so that a
`python` of the developer's own (pyenv, conda) cannot stand in for the system's. Prints
the command's last lines, which Python the virtual environment was made from, and the
wall time; exits with the command's status.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
COMMANDS = {"main": 0, "tests": 1}  # their order among the README's ```bash blocks


def readme_command(name):
    """The README's quick-start command `name`, as written."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```bash\n(.*?)\n```", f.read(), re.S)
    return blocks[COMMANDS[name]].strip()


def system_environment():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PYENV", "VIRTUAL_ENV", "CONDA"))}
    env["PATH"] = SYSTEM_PATH
    return env


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", choices=sorted(COMMANDS), required=True)
    parser.add_argument("--workdir", default="/tmp/quick_start")
    args = parser.parse_args()
    clone = os.path.join(args.workdir, "alexnet_tf")
    if os.path.exists(clone):
        shutil.rmtree(clone)
    os.makedirs(args.workdir, exist_ok=True)
    subprocess.run(["git", "clone", "-q", REPO, clone], check=True)
    command = readme_command(args.command)
    print(f"$ {command}\n(in {clone}, PATH={SYSTEM_PATH})", flush=True)
    log_path = os.path.join(args.workdir, f"{args.command}.log")
    began = time.monotonic()
    with open(log_path, "w") as log:
        status = subprocess.run(["bash", "-e", "-c", command], cwd=clone, stdout=log,
                                stderr=subprocess.STDOUT, env=system_environment()).returncode
    elapsed = time.monotonic() - began
    with open(log_path, errors="replace") as log:
        lines = log.read().replace("\r", "\n").splitlines()
    print("\n".join([line for line in lines if line.strip()][-25:]))
    venv_python = os.path.join(clone, ".venv", "bin", "python")
    if os.path.exists(venv_python):
        base = subprocess.run([venv_python, "-c", "import sys; print(sys.base_prefix, "
                               "sys.version.split()[0])"], capture_output=True, text=True)
        print(f"virtual environment made from: {base.stdout.strip()}")
    print(f"exit status {status}; {elapsed / 60:.1f} min; full log {log_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
