#!/usr/bin/env bash
# make fleet-up: builds the images (zp:dev, zp-prometheus:dev), starts
# docker-compose.yml (a hub, three agents, Prometheus, a client) and waits
# until the three agents have joined the hub. make fleet-down removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/docker-build.sh
docker-compose up -d
printf 'waiting for the agents to join the hub' >&2
for _ in $(seq 1 120); do
  n=$(docker-compose exec -T client zp fleet hub 2>/dev/null | awk '$NF == "up"' | wc -l || true)
  [ "$n" = 3 ] && break
  printf . >&2; sleep 0.5
done
echo >&2
docker-compose exec -T client zp fleet hub || true
[ "${n:-0}" = 3 ] || { echo "fleet-up: only ${n:-0} of 3 agents joined; see docker-compose logs hub agent1" >&2; exit 1; }
cat >&2 <<'MSG'

The fleet is up. Run a command on every agent:
  docker-compose exec client zp --fleet hub uname -a
More: zp --fleet hub --label role=web …, --group, --json; zp fleet hub --json;
Prometheus: docker-compose exec client wget -qO- 'http://prometheus:9090/api/v1/query?query=up'
Stop and remove everything: make fleet-down
MSG
