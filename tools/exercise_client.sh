#!/usr/bin/env bash
# Walk tools/exercise.sh's path through the API with the command line instead of curl:
# every `athenaq` client command (query, status, cancel, refresh, history, list,
# usage) against a running server, checking what each prints and its exit status.
# Stops at the first that differs, showing the command's status, stdout and stderr.
#
# Usage: tools/exercise_client.sh BASE_URL   e.g. tools/exercise_client.sh http://127.0.0.1:8080
#
# Environment:
#   ATHENAQ            the command to run (default: athenaq from PATH)
#   ATHENAQ_KEY        an API key, for a server with auth.mode api_keys; the run also
#                      checks that a wrong key exits 1 unauthorized, that the status names
#                      the key's owner, and that no output shows the key
#   EXERCISE_TIMEOUT   seconds a wait for a state may take (default 60)
#   EXERCISE_FAST_SQL, EXERCISE_SLOW_SQL, EXERCISE_FAIL_SQL, EXERCISE_PARAM_SQL
#                      as for tools/exercise.sh: the defaults run on the local engine
#                      and script the test endpoint; set the first three for real Athena
#
# Exit status: 0 all checks passed, 1 a check failed, 2 a usage problem.

# The jq filters in single quotes use jq's own $variables, passed with --arg.
# shellcheck disable=SC2016
set -euo pipefail

usage() {
    echo "usage: $0 BASE_URL   (e.g. $0 http://127.0.0.1:8080)"
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
if [[ $# -ne 1 || ! $1 =~ ^https?://[^/]+ ]]; then
    usage >&2
    exit 2
fi
ATHENAQ=${ATHENAQ:-athenaq}
for tool in "$ATHENAQ" jq; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "exercise_client: '$tool' is required but was not found" >&2
        exit 2
    fi
done
export ATHENAQ_URL=${1%/}
TIMEOUT=${EXERCISE_TIMEOUT:-60}

FAST_SQL=${EXERCISE_FAST_SQL:-$'SELECT 1 AS n, CAST(NULL AS VARCHAR) AS missing, \'\' AS empty\n-- double: {"columns": [["n","integer"],["missing","varchar"],["empty","varchar"]], "rows": [["1", null, ""]]}'}
SLOW_SQL=${EXERCISE_SLOW_SQL:-$'SELECT count(*) FROM range(20000000000000)\n-- double: {"queue_ms": 300, "run_ms": 600000}'}
FAIL_SQL=${EXERCISE_FAIL_SQL:-$'SELECT * FROM athenaq_exercise_missing_table\n-- double: {"fail": "Table athenaq_exercise_missing_table does not exist"}'}
PARAM_SQL=${EXERCISE_PARAM_SQL:-$'SELECT s FROM (VALUES (\'it\'\'s\'), (\'other\')) AS t(s) WHERE s = ?\n-- double: {"columns": [["s","varchar"]], "rows": [[{"parameter": 1}]]}'}
UUID_RE='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
UNKNOWN_ID=00000000-0000-4000-8000-000000000000

TMP=$(mktemp -d "${TMPDIR:-/tmp}/exercise_client.XXXXXX")
LIVE=""   # slow queries this run started and has not cancelled yet
cleanup() {
    local rc=$? id
    if [[ $rc -ne 0 ]]; then
        for id in $LIVE; do
            "$ATHENAQ" cancel "$id" >/dev/null 2>&1 || true
            echo "exercise_client: asked the server to cancel $id, which this failed run left running" >&2
        done
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CHECKS=0 RC=0 OUT="" ERR="" CMD=""

# run EXPECTED_STATUS ARGS...: `athenaq ARGS...`, into RC, OUT and ERR; fails unless it
# exits EXPECTED_STATUS.
run() {
    local expected=$1
    shift
    CMD="athenaq $(printf '%q ' "$@" | tr '\n' ' ' | cut -c1-120)"
    RC=0
    "$ATHENAQ" "$@" >"$TMP/out" 2>"$TMP/err" || RC=$?
    OUT=$(<"$TMP/out")
    ERR=$(<"$TMP/err")
    if [[ $RC != "$expected" ]]; then
        fail "exit status $expected"
    fi
}

# fail EXPECTED: report the last command against what was expected, and stop.
fail() {
    printf 'FAIL %s: expected %s, got exit status %s\n     stdout: %s\n     stderr: %s\n' \
        "$CMD" "$1" "$RC" "${OUT:0:2000}" "${ERR:0:2000}" >&2
    exit 1
}

# pass [DETAIL]: one line for one successful check of the last command.
pass() {
    CHECKS=$((CHECKS + 1))
    printf 'ok   %s -> %s%s\n' "$CMD" "$RC" "${1:+ $1}"
}

# expect_out WHAT FILTER [JQ_ARGS...]: jq FILTER holds for stdout.
expect_out() {
    jq -e "${@:3}" "$2" <<<"$OUT" >/dev/null 2>&1 || fail "$1"
}

# expect_err TEXT: stderr says TEXT.
expect_err() {
    if [[ $ERR != *"$1"* ]]; then
        fail "stderr saying '$1'"
    fi
}

# state_of ID: the query's state now.
state_of() {
    run 0 status "$1"
    jq -r .state <<<"$OUT"
}

# wait_for_state ID STATE: poll `athenaq status` until the query is in STATE.
wait_for_state() {
    local id=$1 target=$2 until=$((SECONDS + TIMEOUT)) state
    while state=$(state_of "$id") && [[ $state != "$target" ]]; do
        if ((SECONDS >= until)); then
            CMD="athenaq status $id" RC=0
            fail "state $target within ${TIMEOUT}s (still $state)"
        fi
        sleep 0.2
    done
    CMD="athenaq status $id" RC=0
    pass "$target"
}

# --- 1. A fast query: one command from SQL to a CSV file ------------------------------
run 0 query "$FAST_SQL" -o "$TMP/fast.csv"
expect_err SUCCEEDED
expect_err "written to $TMP/fast.csv"
if [[ -z ${EXERCISE_FAST_SQL:-} && $(<"$TMP/fast.csv") != $'"n","missing","empty"\n"1",,""' ]]; then
    fail "the CSV \"n\",\"missing\",\"empty\" / \"1\",,\"\" (NULL unquoted, '' quoted)"
fi
pass "$(wc -l <"$TMP/fast.csv") lines of CSV"
run 0 query --no-wait "$FAST_SQL"
FAST_ID=$OUT
if [[ ! $FAST_ID =~ $UUID_RE ]]; then
    fail "the new query's id alone on stdout"
fi
pass "id=$FAST_ID"
run 0 status "$FAST_ID" --wait
expect_out 'the status object of a SUCCEEDED query' \
    '.id == $id and .state == "SUCCEEDED" and (.athena_query_execution_id | type == "string")
     and (.statistics | has("data_scanned_bytes")) and (.submitted_at | endswith("Z"))' --arg id "$FAST_ID"
FAST_EXECUTION_ID=$(jq -r .athena_query_execution_id <<<"$OUT")
pass SUCCEEDED
run 0 query "$FAST_SQL" --format jsonl
if ! head -n 1 <<<"$OUT" | jq -e '.columns | type == "array"' >/dev/null 2>&1; then
    fail 'JSON lines, the first {"columns": [...]}'
fi
if [[ -z ${EXERCISE_FAST_SQL:-} && $(sed -n 2p <<<"$OUT") != '["1",null,""]' ]]; then
    fail 'the row ["1",null,""] as JSON lines'
fi
pass "$(wc -l <<<"$OUT") JSON lines"
run 0 query "$FAST_SQL" --format table
if [[ $OUT != *missing* || $OUT != *NULL* ]]; then
    fail "a table of the columns, NULL shown as NULL"
fi
pass table

# --- 2. Bad input: a usage error, or the service's 400, exit 2 -------------------------
run 2 query
pass "no SQL"
run 2 query "$FAST_SQL" --label no-equals-sign
pass "a label without ="
run 2 query "$FAST_SQL" --format table -o "$TMP/table.csv"
pass "-o with a table"
run 2 query "$FAST_SQL" --timeout 0
expect_err "validation_error: timeout_seconds"
pass "validation_error names timeout_seconds"
run 2 query " "
expect_err "validation_error: query"
pass "validation_error names query"

# --- 3. Unknown ids: exit 1 not_found ------------------------------------------------
for command in status cancel refresh history; do
    run 1 "$command" "$UNKNOWN_ID"
    expect_err "not_found"
    pass not_found
done

# --- 4. A slow query: refresh refused while it runs, then cancelled --------------------
run 0 query --no-wait "$SLOW_SQL"
SLOW_ID=$OUT
LIVE="$LIVE $SLOW_ID"
pass "id=$SLOW_ID"
wait_for_state "$SLOW_ID" RUNNING
run 1 refresh "$SLOW_ID"
expect_err query_running
pass query_running
run 0 cancel "$SLOW_ID"
expect_out '{"id", "state": "CANCELLED"} or a cancel requested' \
    '.id == $id and (.state == "CANCELLED" or .cancel_requested == true)' --arg id "$SLOW_ID"
pass "$(jq -r .state <<<"$OUT")"
run 1 status "$SLOW_ID" --wait
expect_out 'state CANCELLED' '.state == "CANCELLED"'
expect_err CANCELLED
pass "CANCELLED, exit 1"
LIVE=${LIVE//$SLOW_ID/}
run 1 cancel "$SLOW_ID"
expect_err query_cancelled
pass query_cancelled

# --- 5. A finished query refuses cancel ----------------------------------------------
run 1 cancel "$FAST_ID"
expect_err query_finished
pass query_finished

# --- 6. Refresh of the finished query: a new Athena execution ------------------------
run 0 refresh "$FAST_ID" --wait
expect_out 'SUCCEEDED with a new athena_query_execution_id' \
    '.state == "SUCCEEDED" and .athena_query_execution_id != $e' --arg e "$FAST_EXECUTION_ID"
pass "new athena_query_execution_id $(jq -r .athena_query_execution_id <<<"$OUT")"

# --- 7. Refresh of the cancelled query, then cancel it again --------------------------
run 0 refresh "$SLOW_ID"
LIVE="$LIVE $SLOW_ID"
expect_out '{"id", "state": "QUEUED"}' '.id == $id and .state == "QUEUED"' --arg id "$SLOW_ID"
pass QUEUED
run 0 cancel "$SLOW_ID"
run 1 status "$SLOW_ID" --wait
LIVE=${LIVE//$SLOW_ID/}
pass CANCELLED

# --- 8. A failing query: exit 1 with the reason ---------------------------------------
run 1 query "$FAIL_SQL" -o "$TMP/fail.csv"
expect_err FAILED
if [[ -z ${EXERCISE_FAIL_SQL:-} ]]; then
    expect_err athenaq_exercise_missing_table
fi
if [[ -e $TMP/fail.csv ]]; then
    fail "no file for a failed query"
fi
pass "FAILED, no file"
FAIL_ID=$(jq -r '.id' < <("$ATHENAQ" list --state FAILED --limit 1))

# --- 9. Five fast queries at once all succeed -----------------------------------------
pids=()
for i in 1 2 3 4 5; do
    "$ATHENAQ" query -q "$FAST_SQL" -o "$TMP/parallel$i.csv" 2>"$TMP/parallel$i.err" &
    pids+=($!)
done
for i in 1 2 3 4 5; do
    RC=0
    wait "${pids[$((i - 1))]}" || RC=$?
    CMD="athenaq query -q ... -o parallel$i.csv (parallel $i/5)"
    ERR=$(<"$TMP/parallel$i.err") OUT=""
    if [[ $RC != 0 || ! -s $TMP/parallel$i.csv ]]; then
        fail "exit 0 and a CSV file"
    fi
    pass
done

# --- 10. Parameters and labels ---------------------------------------------------------
run 0 query "$PARAM_SQL" --param "'it''s'" --label exercise=parameters --label run.id=1 --format jsonl
if [[ -z ${EXERCISE_PARAM_SQL:-} && $(sed -n 2p <<<"$OUT") != "[\"it's\"]" ]]; then
    fail "the row the parameter selects, [\"it's\"]"
fi
pass "row $(sed -n 2p <<<"$OUT")"
run 0 list --label exercise=parameters --limit 1
expect_out 'the parameters and labels as submitted' \
    '.parameters == ["'"'it''s'"'"] and .labels == {exercise: "parameters", "run.id": "1"}'
PARAM_ID=$(jq -r .id <<<"$OUT")
pass "labels $(jq -c .labels <<<"$OUT")"

# --- 11. The cache (--max-age), and a retry with an Idempotency-Key --------------------
run 0 query --no-wait --max-age 3600 "$FAST_SQL"
expect_err "from athenaq's cache"
pass "cached id=$OUT"
KEY="exercise-client-$RANDOM$RANDOM"
run 0 query --no-wait --idempotency-key "$KEY" "$FAST_SQL"
KEYED_ID=$OUT
run 0 query --no-wait --idempotency-key "$KEY" "$FAST_SQL"
if [[ $OUT != "$KEYED_ID" ]]; then
    fail "the first answer's id $KEYED_ID"
fi
pass "the same query again"
run 1 query --no-wait --idempotency-key "$KEY" "$FAIL_SQL"
expect_err idempotency_key_reused
pass idempotency_key_reused
run 0 status "$KEYED_ID" --wait

# --- 11a. --timeout: the slow query stopped, FAILED -----------------------------------
run 1 query "$SLOW_SQL" --timeout 1
expect_err "timed out after 1 s"
pass "timed out"
run 0 list --state FAILED --limit 1
TIMEOUT_ID=$(jq -r .id <<<"$OUT")
run 0 history "$TIMEOUT_ID"
expect_out 'a last move to FAILED by timeout' '.transitions[-1] | .to == "FAILED" and .by == "timeout"'
pass "FAILED by timeout"

# --- 12. With a key: the owner, and a wrong key refused --------------------------------
if [[ -n ${ATHENAQ_KEY:-} ]]; then
    run 0 status "$FAST_ID"
    expect_out "the key's name as owner" '.owner != "anonymous"'
    pass "owner=$(jq -r .owner <<<"$OUT")"
    run 1 status "$FAST_ID" --key aq_exercise-wrong-key
    expect_err unauthorized
    pass "unauthorized (wrong key)"
fi

# --- 13. Finding queries again: the listing, a history, the usage ----------------------
run 0 list --limit 2
if [[ $(wc -l <<<"$OUT") != 2 ]]; then
    fail "two queries, one JSON object a line"
fi
expect_out 'status objects, newest first' -s \
    'all(.[]; has("id") and has("statistics")) and (map(.submitted_at) == (map(.submitted_at) | sort | reverse))'
pass "2 queries"
run 0 list --state FAILED --limit 500
expect_out "the failed query $FAIL_ID among the FAILED ones" -s \
    'any(.[]; .id == $id) and all(.[]; .state == "FAILED")' --arg id "$FAIL_ID"
pass "--state FAILED lists $FAIL_ID"
run 0 list --label exercise=parameters
expect_out "the labelled query $PARAM_ID among those labelled exercise=parameters" -s \
    'any(.[]; .id == $id) and all(.[]; .labels.exercise == "parameters")' --arg id "$PARAM_ID"
pass "--label lists $PARAM_ID"
run 2 list --state DONE
pass "--state refused"
run 0 history "$FAST_ID"
expect_out 'every run of the refreshed query, oldest first, from a submit' \
    '.id == $id and .transitions[0].event == "submit" and any(.transitions[]; .event == "refresh" and .run == 2)' \
    --arg id "$FAST_ID"
pass "$(jq '.transitions | length' <<<"$OUT") transitions"
for group_by in owner day workgroup; do
    run 0 usage --group-by "$group_by"
    expect_out 'groups of counts, bytes and cost' \
        '.groups | length > 0 and all(.[]; .queries >= .succeeded + .failed + .cancelled)'
    pass "by $group_by"
done

# --- 14. Nothing listening: exit 3 ------------------------------------------------------
run 3 status "$FAST_ID" --url http://127.0.0.1:9
expect_err "no answer from http://127.0.0.1:9"
pass unreachable

echo "exercise_client: all $CHECKS checks passed"
