#!/bin/bash
# Run from the repository root after `cargo build --release --example analytics_api`; needs `wrk`
# (`apt-get install wrk`). Loopback only; the load stops by itself after 60 s.
# A 60 s flood of POST /event (/metrics never scraped), sampling the server's RSS every 10 s.
PORT=18765
RUST_LOG=warn BIND=127.0.0.1 PORT=$PORT RATE_LIMIT=100000000 API_V1_RATE_LIMIT=100000000 target/release/examples/analytics_api & 
PID=$!
sleep 1
rss() { grep VmRSS /proc/$PID/status | awk '{print $2}'; }
echo "start: $(rss) kB"
cat > /tmp/post.lua <<'L'
wrk.method = "POST"
wrk.body = '{"user_id":1,"event_type":"page_view","timestamp":1690000000,"payload":{"platform":"ios"}}'
wrk.headers["Content-Type"] = "application/json"
L
timeout 65 wrk -t1 -c16 -d60s -s /tmp/post.lua http://127.0.0.1:$PORT/event > /tmp/wrk.out 2>&1 &
W=$!
for i in 1 2 3 4 5 6; do sleep 10; echo "t=${i}0s: $(rss) kB"; done
wait $W
cat /tmp/wrk.out | grep -E 'Requests/sec|requests in'
echo "end: $(rss) kB"
kill $PID
