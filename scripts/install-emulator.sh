#!/usr/bin/env bash
# Installs the moto server (S3 + SQS + DynamoDB + Secrets Manager emulator) from Debian's packages, as root.
# Debian 13+: python3-moto is in the archive. Debian 12 has no python3-moto, so this takes the trixie .deb
# (Architecture: all, pure Python) and unpacks it into $MOTO_HOME, where bookworm's python3 and deps run it.
# No registry host is named here: the machine's own configured Debian mirror is reused, only the suite differs.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
MOTO_HOME=${MOTO_HOME:-/opt/moto}
PP=""
[ -d "$MOTO_HOME/usr/lib/python3/dist-packages" ] && PP="$MOTO_HOME/usr/lib/python3/dist-packages"
# Already installed (a dev machine, a re-run): nothing to do.
if PYTHONPATH="$PP" /usr/bin/python3 -c 'import moto, moto.server' 2>/dev/null; then
  PYTHONPATH="$PP" /usr/bin/python3 -c 'import moto; print("moto", moto.__version__, "(already installed)")'
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
cand=$(apt-cache policy python3-moto | awk '/Candidate:/ {print $2}')
if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
  $SUDO apt-get install -y -qq --no-install-recommends python3-moto python3-flask-cors >/dev/null
else
  $SUDO apt-get install -y -qq --no-install-recommends python3 python3-boto3 python3-botocore python3-flask \
    python3-flask-cors python3-werkzeug python3-jinja2 python3-requests python3-responses python3-dateutil \
    python3-xmltodict python3-antlr4 python3-yaml python3-cryptography >/dev/null
  # The machine's own Debian mirror (first non-security URI); only the suite differs.
  mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    awk '/^URIs:/ || /^deb / {print $2}' | grep -v security | head -n1 || true)
  if [ -z "$mirror" ]; then
    echo "install-emulator: no Debian mirror configured in /etc/apt" >&2
    exit 1
  fi
  alt=$(mktemp -d)
  trap 'rm -rf "$alt"' EXIT
  mkdir -p "$alt/lists/partial" "$alt/cache/archives/partial"
  chmod 755 "$alt"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$alt/sources.list"
  o=(-o Dir::Etc::SourceList="$alt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$alt/lists" -o Dir::Cache="$alt/cache")
  apt-get "${o[@]}" update -qq
  (cd "$alt" && apt-get "${o[@]}" download python3-moto 2>/dev/null)
  $SUDO rm -rf "$MOTO_HOME"
  $SUDO dpkg -x "$alt"/python3-moto_*_all.deb "$MOTO_HOME"
  PP="$MOTO_HOME/usr/lib/python3/dist-packages"
fi
PYTHONPATH="$PP" /usr/bin/python3 -c 'import moto, moto.server; print("moto", moto.__version__)'
