# Sourced by scripts/test and scripts/demo: make .venv and install the project
# into it, pinned by constraints.txt. Reinstalls only when pyproject.toml or
# constraints.txt changed, so a second run costs nothing.
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "venv: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
stamp=.venv/.factflow-install-stamp
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "venv: installing factflow-lineage[test] into .venv (log: .venv/install.log)"
  # setuptools prints pages of warnings even with -q: keep them in the log,
  # show them only when the install fails.
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"; } \
       > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "venv: install failed (full log: .venv/install.log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
