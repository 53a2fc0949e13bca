# Sourced by the scripts that run Python tools (tools/*/run.sh, notebooks/run.sh,
# tools/api_check.sh): `venv_ready VENV REQUIREMENTS` makes the virtual environment VENV with
# the pinned REQUIREMENTS once, and again whenever the requirements file changes.
venv_ready() {
    local venv=$1 requirements=$2
    if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
        cp "$requirements" "$venv/requirements.txt"
    fi
}
