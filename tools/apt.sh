# Sourced by tools/install_*.sh and tools/start_postgres.sh: root or sudo, and an
# idempotent, quiet install of the Debian packages that are missing.

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install WHAT PACKAGE...: install the packages not installed yet (no recommends);
# nothing at all, not even `apt-get update`, when every one is there.
apt_install() {
    local what=$1 pkg
    shift
    local missing=()
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    echo "installing $what (apt): ${missing[*]}" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
