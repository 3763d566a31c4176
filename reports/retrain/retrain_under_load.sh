#!/bin/bash
# make retrain twice while Locust hits the server (bounded: -t 2400s, stopped after the second retrain)
#   START_VERSION=<base-log bundle version> bash reports/retrain/retrain_under_load.sh | tee reports/retrain/run.log
cd "$(dirname "$0")/../.."
mkdir -p /tmp/rul
export RECSYS_ADMIN_TOKEN=retrain-demo-token
B=artifacts/ml-100k/bundles
# The events are cleared, so serve a bundle built without them (START_VERSION, e.g. the base-log
# bundle): a bundle trained on deleted events would know users and items the next retrain forgets.
if [ -n "$START_VERSION" ]; then
  .venv/bin/python -c "from recsys.bundle import set_current; set_current('$B/compressed', '$START_VERSION')" || exit 1
fi
rm -f data/events.sqlite*
if curl -sf http://127.0.0.1:8000/healthz > /dev/null; then echo "port 8000 is taken"; exit 1; fi
.venv/bin/python -m serving --bundle $B/compressed --host 127.0.0.1 --port 8000 --events-db data/events.sqlite > /tmp/rul/server.log 2>&1 &
SERVER=$!
for i in $(seq 60); do curl -sf http://127.0.0.1:8000/readyz > /dev/null && break; sleep 1; done
echo "== $(date -u +%T) serving $(curl -s http://127.0.0.1:8000/version)"
RECSYS_LOADTEST_BUNDLE=$B/compressed RECSYS_LOADTEST_RATE=3 .venv/bin/locust -f loadtest/locustfile.py --headless \
  -u 10 -r 10 -t 2400s --host http://127.0.0.1:8000 --csv /tmp/rul/locust --only-summary > /tmp/rul/locust.log 2>&1 &
LOCUST=$!
sleep 60
for run in 1 2; do
  echo "== $(date -u +%T) make retrain #$run"
  start=$(date +%s)
  make retrain > /tmp/rul/retrain$run.log 2>&1
  rc=$?
  echo "== $(date -u +%T) make retrain #$run exit $rc after $(( $(date +%s) - start )) s; serving $(curl -s http://127.0.0.1:8000/version)"
  sleep 20
done
kill -TERM $LOCUST  # background jobs ignore SIGINT in a script
wait $LOCUST; echo "== locust exit $?"
kill $SERVER; wait $SERVER
# Full logs (progress bars and all) under raw/ (not tracked); the step lines beside them.
mkdir -p reports/retrain/raw
for log in retrain1.log retrain2.log; do
  cp /tmp/rul/$log reports/retrain/raw/$log
  tr '\r' '\n' < /tmp/rul/$log | sed 's/^.*\[A//' \
    | grep -E 'ops\.retrain|INFO __main__|Quality gate|Served as|^- `|^retrain:|rror' > reports/retrain/$log
done
cp /tmp/rul/locust_stats.csv /tmp/rul/locust_failures.csv reports/retrain/
tail -n 40 /tmp/rul/locust.log > reports/retrain/locust_percentiles.txt
