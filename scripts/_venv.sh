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
  echo "venv: installing factflow-lineage[test] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
