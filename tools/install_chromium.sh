#!/usr/bin/env bash
# Install Debian's Chromium for the web UI's browser tests (tests/ui).
#
# Playwright drives this system browser through its executable_path (/usr/bin/chromium);
# Playwright's own browser download is never used (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1),
# so nothing but Debian's archive is needed. A font package is named too: without
# recommends, Chromium may come with no fonts and screenshots would show boxes.
#
# Idempotent and quiet: does nothing when every package is installed already.
# Runs as root (CI containers) or through sudo otherwise.
set -euo pipefail

PACKAGES=(
    chromium            # /usr/bin/chromium (headless via --headless)
    fonts-liberation    # Arial/Helvetica/Courier-metric fonts for readable screenshots
    fonts-dejavu-core   # broad Unicode coverage (arrows, box drawing)
)

source "$(dirname "$0")/apt.sh"
apt_install "Chromium" "${PACKAGES[@]}"
