#!/usr/bin/env bash
# Starts the moto server on 127.0.0.1:<port> (default 4566) in the background, waits until it accepts
# connections, and prints its PID (the caller stops it with `kill <pid>`). Log: /tmp/moto-<port>.log.
set -euo pipefail
port=${1:-4566}
MOTO_HOME=${MOTO_HOME:-/opt/moto}
PP=""
[ -d "$MOTO_HOME/usr/lib/python3/dist-packages" ] && PP="$MOTO_HOME/usr/lib/python3/dist-packages"
if ! PYTHONPATH="$PP" /usr/bin/python3 -c 'import moto.server' 2>/dev/null; then
  echo "start-moto: moto is not installed; run: sudo bash scripts/install-emulator.sh" >&2
  exit 2
fi
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "start-moto: port $port is already in use" >&2
  exit 1
fi
log="/tmp/moto-$port.log"
# moto.server, with DynamoDB's writes made atomic (see moto-server.py).
PYTHONPATH="$PP" nohup /usr/bin/python3 "$(dirname "$0")/moto-server.py" -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 1 150); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "$pid"
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
kill "$pid" 2>/dev/null || true
cat "$log" >&2
exit 1
