#!/usr/bin/env bash
# Times config reloads (POST /reload) of a config with 1,000 routes and 100 pools
# (2 endpoints each, health checks off), against the release binary:
#   benches/reload_time.sh [ROUNDS]        (default 5; builds nothing: run `cargo build --release` first)
# Prints each round's wall time as curl measures it, then the median.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
bin=target/release/trident
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(port); admin=$(port)
{
  printf '[server]\nhttp_listen = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\naccess_log = "off"\n' "$http" "$admin"
  for p in $(seq 0 99); do
    printf '[[pools]]\nname = "p%d"\nendpoints = [ { http = "127.0.1.%d:8000" }, { http = "127.0.2.%d:8000" } ]\n' "$p" "$p" "$p"
  done
  for r in $(seq 0 999); do
    printf '[[routes]]\nmodel = "model-%d"\npool = "p%d"\n' "$r" $((r % 100))
  done
  printf '[[routes]]\nmodel = "*"\npool = "p0"\n'
} > "$dir/trident.toml"
"$bin" run --config "$dir/trident.toml" 2>"$dir/stderr" &
pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/live" >/dev/null && break; sleep 0.1; done
times=()
for _ in $(seq "$rounds"); do
  t=$(curl -s -o "$dir/answer" -w '%{time_total}' -X POST "http://127.0.0.1:$admin/reload")
  grep -q '"reloaded":true' "$dir/answer" || { cat "$dir/answer"; exit 1; }
  times+=("$t")
  echo "reload: ${t}s"
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print "median: " a[int((NR+1)/2)] "s over " NR " reloads (1,000 routes, 100 pools)"}'
