#!/usr/bin/env bash
# Exercise every endpoint and behaviour of the athenaq HTTP API (API.md) against a
# running server, one line per check. Stops at the first answer that differs from
# the contract, showing what was expected, the status and the body it got.
#
# Usage: tools/exercise.sh BASE_URL        e.g. tools/exercise.sh http://127.0.0.1:8080
#
# Environment:
#   EXERCISE_TIMEOUT   seconds a wait for a state may take (default 60); waits poll
#                      GET /query/<id>/status every 0.2 s
#   EXERCISE_FAST_SQL  a query that succeeds quickly
#   EXERCISE_SLOW_SQL  a query that stays RUNNING until it is cancelled
#   EXERCISE_FAIL_SQL  a query that Athena fails
#   EXERCISE_PARAM_SQL a query with one `?` placeholder that succeeds with the
#                      execution parameter 'it''s' (a string literal)
#   EXERCISE_HEADER    optional extra request header, e.g. "Authorization: Bearer ..."
#   ATHENAQ_KEY        an API key, for a server with auth.mode api_keys: sent as
#                      Authorization: Bearer (unless EXERCISE_HEADER is set), and the
#                      run also checks that a missing or wrong key answers 401 and that
#                      the status names the key's owner. Never printed.
# The SQL defaults run as real SQL on the local engine (athenaq-local, DuckDB) and
# script the project's test Athena endpoint through a `-- double: {JSON}` line
# comment; against real Athena, set the first three (the parameter's default is
# Athena SQL too).
#
# Exit status: 0 all checks passed, 1 a check failed, 2 a usage problem.

# The jq filters in single quotes use jq's own $variables, passed with --arg.
# shellcheck disable=SC2016
set -euo pipefail

usage() {
    echo "usage: $0 BASE_URL   (e.g. $0 http://127.0.0.1:8080)"
}

for tool in curl jq; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "exercise: '$tool' is required but was not found in PATH" >&2
        exit 2
    fi
done
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
if [[ $# -ne 1 || -z $1 ]]; then
    usage >&2
    exit 2
fi
if [[ ! $1 =~ ^https?://[^/]+ ]]; then
    echo "exercise: BASE_URL must be an http:// or https:// URL, got '$1'" >&2
    exit 2
fi
BASE_URL=${1%/}
TIMEOUT=${EXERCISE_TIMEOUT:-60}
if [[ ! $TIMEOUT =~ ^[1-9][0-9]*$ ]]; then
    echo "exercise: EXERCISE_TIMEOUT must be a whole number of seconds, got '$TIMEOUT'" >&2
    exit 2
fi

printf -v DEFAULT_FAST_SQL '%s\n%s' "SELECT 1 AS n, CAST(NULL AS VARCHAR) AS missing, '' AS empty" \
    '-- double: {"columns": [["n","integer"],["missing","varchar"],["empty","varchar"]], "rows": [["1", null, ""]]}'
printf -v DEFAULT_SLOW_SQL '%s\n%s' 'SELECT count(*) FROM range(20000000000000)' \
    '-- double: {"queue_ms": 300, "run_ms": 600000}'
printf -v DEFAULT_FAIL_SQL '%s\n%s' 'SELECT * FROM athenaq_exercise_missing_table' \
    '-- double: {"fail": "Table athenaq_exercise_missing_table does not exist"}'
printf -v DEFAULT_PARAM_SQL '%s\n%s' "SELECT s FROM (VALUES ('it''s'), ('other')) AS t(s) WHERE s = ?" \
    '-- double: {"columns": [["s","varchar"]], "rows": [[{"parameter": 1}]]}'
if [[ -n ${ATHENAQ_KEY:-} ]]; then
    EXERCISE_HEADER=${EXERCISE_HEADER:-"Authorization: Bearer $ATHENAQ_KEY"}
fi
FAST_SQL=${EXERCISE_FAST_SQL:-$DEFAULT_FAST_SQL}
SLOW_SQL=${EXERCISE_SLOW_SQL:-$DEFAULT_SLOW_SQL}
FAIL_SQL=${EXERCISE_FAIL_SQL:-$DEFAULT_FAIL_SQL}
PARAM_SQL=${EXERCISE_PARAM_SQL:-$DEFAULT_PARAM_SQL}

UUID_RE='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
TIMESTAMP_RE='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?Z$'
STATUS_FIELDS=(id state state_reason query database workgroup catalog parameters labels
    result_reuse_minutes reused_previous_result timeout_seconds callback_url callback
    athena_query_execution_id submitted_at completed_at results_at results_expires_at
    statistics owner)
STATISTICS_FIELDS=(data_scanned_bytes engine_execution_ms queue_ms total_execution_ms cost_usd)
RESULTS_FIELDS=(id state results_at columns rows row_count)

# Globals set by request/load: STATUS, BODY, HEADERS, and REQ ("METHOD PATH") for messages.
STATUS="" BODY="" HEADERS="" REQ="(no request yet)"
CHECKS=0
WAIT_UNTIL=""   # when set, wait_state uses this SECONDS deadline instead of its own
LIVE=""         # ids of slow queries this run started and has not cancelled yet

TMP=$(mktemp -d "${TMPDIR:-/tmp}/exercise.XXXXXX")

# On a failed run, ask the server to cancel the slow queries this run left running.
cleanup() {
    local rc=$? id
    if [[ $rc -ne 0 && -n $LIVE ]]; then
        for id in $LIVE; do
            curl -sS -o /dev/null --max-time 5 -X POST --data-binary '' -H 'Content-Type:' \
                ${EXERCISE_HEADER:+-H "$EXERCISE_HEADER"} "$BASE_URL/query/$id/cancel" || true
            echo "exercise: asked the server to cancel $id, which this failed run left running" >&2
        done
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- reporting -------------------------------------------------------------------

# fail EXPECTED [DETAIL]: report the last answer against what API.md expects, and stop.
fail() {
    {
        printf 'FAIL %s: expected %s, got status %s\n' "$REQ" "$1" "$STATUS"
        printf '     body: %s\n' "${BODY:0:2000}"
        if [[ -n ${2:-} ]]; then
            printf '     %s\n' "$2"
        fi
    } >&2
    exit 1
}

# pass [DETAIL]: one line for one successful check of the last answer.
pass() {
    CHECKS=$((CHECKS + 1))
    printf 'ok   %s -> %s%s\n' "$REQ" "$STATUS" "${1:+ $1}"
}

# --- HTTP --------------------------------------------------------------------------

# send PREFIX METHOD PATH [BODY_FILE [CONTENT_TYPE]]: one HTTP exchange, written to
# PREFIX.status, .headers, .body, .err and .rc (curl's exit code). Safe to run in the
# background. A POST without a body is sent with Content-Length 0 and no Content-Type.
send() {
    local prefix=$1 method=$2 path=$3 body_file=${4:-} content_type=${5:-} rc=0
    # No "Expect: 100-continue" unless EXPECT says so: the body goes at once.
    local -a args=(-sS -X "$method" --max-time "$TIMEOUT" -H "Expect:${EXPECT:+ $EXPECT}"
        -D "$prefix.headers" -o "$prefix.body" -w '%{http_code}')
    if [[ -n $body_file ]]; then
        args+=(--data-binary "@$body_file" -H "Content-Type: $content_type")
    elif [[ $method == POST ]]; then
        args+=(--data-binary '' -H 'Content-Type:')
    fi
    if [[ -n ${EXERCISE_HEADER:-} ]]; then
        args+=(-H "$EXERCISE_HEADER")
    fi
    if [[ -n ${IDEMPOTENCY_KEY:-} ]]; then
        args+=(-H "Idempotency-Key: $IDEMPOTENCY_KEY")
    fi
    : >"$prefix.headers"
    : >"$prefix.body"
    curl "${args[@]}" "$BASE_URL$path" >"$prefix.status" 2>"$prefix.err" || rc=$?
    echo "$rc" >"$prefix.rc"
}

# load PREFIX "METHOD PATH": read what send wrote into STATUS, BODY, HEADERS and REQ.
load() {
    local prefix=$1 rc
    REQ=$2
    STATUS=$(<"$prefix.status")
    BODY=$(<"$prefix.body")
    HEADERS=$(tr -d '\r' <"$prefix.headers")
    rc=$(<"$prefix.rc")
    if [[ $rc != 0 ]]; then
        STATUS=${STATUS:-none}
        fail "an HTTP answer" "curl exit $rc: $(tr '\n' ' ' <"$prefix.err")"
    fi
}

# request METHOD PATH [BODY [CONTENT_TYPE]]: sets STATUS, BODY, HEADERS. A BODY that
# starts with @ names a file holding it; CONTENT_TYPE defaults to application/json.
request() {
    local method=$1 path=$2 body_file=""
    if [[ $# -ge 3 ]]; then
        if [[ $3 == @* ]]; then
            body_file=${3#@}
        else
            body_file=$TMP/request.body
            printf '%s' "$3" >"$body_file"
        fi
    fi
    send "$TMP/response" "$method" "$path" "$body_file" "${4:-application/json}"
    load "$TMP/response" "$method $path"
}

# header NAME: the value of the last answer's header NAME (case-insensitive), or "".
header() {
    printf '%s\n' "$HEADERS" | awk -v name="$1" '
        BEGIN { name = tolower(name) }
        { i = index($0, ":") }
        i > 0 && tolower(substr($0, 1, i - 1)) == name {
            value = substr($0, i + 1); sub(/^[ \t]+/, "", value); sub(/[ \t]+$/, "", value)
        }
        END { print value }'
}

# json FILTER: a raw value from the last answer's body.
json() {
    jq -r "$1" <<<"$BODY"
}

# query_json SQL: a POST /query body, with newlines and quotes encoded by jq.
query_json() {
    jq -n --arg q "$1" '{query: $q}'
}

# --- checks of the last answer ---------------------------------------------------

# expect_json: the body is one JSON object, served as application/json.
expect_json() {
    local content_type
    if ! jq -se 'length == 1 and (.[0] | type == "object")' <<<"$BODY" >/dev/null 2>&1; then
        fail "a JSON object body"
    fi
    content_type=$(header Content-Type)
    if [[ $content_type != application/json* ]]; then
        fail "Content-Type application/json" "Content-Type: $content_type"
    fi
}

# expect_status CODE...: the status is one of CODE, with a JSON object body.
expect_status() {
    local code
    for code in "$@"; do
        if [[ $STATUS == "$code" ]]; then
            expect_json
            return 0
        fi
    done
    fail "$(printf '%s or ' "$@" | sed 's/ or $//')"
}

# expect_jq WHAT FILTER [JQ_ARGS...]: FILTER is true of the body; WHAT says what was expected.
expect_jq() {
    local what=$1 filter=$2
    shift 2
    if ! jq -e "$@" "$filter" <<<"$BODY" >/dev/null 2>&1; then
        fail "$what"
    fi
}

# expect_fields WHERE FIELD...: the object at jq path WHERE has every FIELD.
expect_fields() {
    local where=$1 missing
    shift
    missing=$(jq -r --arg names "$*" "$where"' as $o
        | if ($o | type) != "object" then "all (not an object)"
          else [$names | split(" ")[] | select(. as $k | $o | has($k) | not)] | join(", ") end' \
        <<<"$BODY")
    if [[ -n $missing ]]; then
        fail "$where with fields $*" "missing: $missing"
    fi
}

# expect_code STATUS CODE [STATES]: an error answer {"error": {"code", "message"}}.
# An empty CODE accepts any snake_case code; STATES ("A|B") is what "state" must be.
expect_code() {
    local status=$1 code=$2 states=${3:-} what="$1 ${2:-error}"
    if [[ $STATUS != "$status" ]]; then
        fail "$what"
    fi
    expect_json
    expect_jq "$what as {\"error\": {\"code\", \"message\"}}" \
        '(.error.code | type == "string" and test("^[a-z][a-z0-9_]*$"))
         and ($code == "" or .error.code == $code)
         and (.error.message | type == "string" and length > 0)' --arg code "$code"
    if [[ -n $states ]]; then
        expect_jq "$what with \"state\": $states" \
            '.state as $s | $states | split("|") | any(.[]; . == $s)' --arg states "$states"
    fi
    if [[ $BODY == *Traceback* ]]; then
        fail "$what without a traceback"
    fi
}

# expect_accepted: a 202 {"id", "state"} for a new query with its Location; prints the id.
expect_accepted() {
    local id location
    expect_status 202
    expect_jq 'an "id" that is a lowercase UUID' '.id | type == "string" and test($re)' --arg re "$UUID_RE"
    expect_jq 'a "state" of a new query' '.state | type == "string" and test("^(QUEUED|RUNNING|SUCCEEDED|FAILED)$")'
    id=$(json .id)
    location=$(header Location)
    if [[ $location != "/query/$id/status" && ! $location =~ ^https?://[^/]+/query/$id/status$ ]]; then
        fail "Location: /query/$id/status" "Location: $location"
    fi
    echo "$id"
}

# expect_status_object ID SQL STATE: the status object API.md lists, for ID in STATE.
expect_status_object() {
    local id=$1 sql=$2 state=$3
    expect_fields . "${STATUS_FIELDS[@]}"
    expect_fields .statistics "${STATISTICS_FIELDS[@]}"
    expect_jq "id $id in state $state" '.id == $id and .state == $state' --arg id "$id" --arg state "$state"
    expect_jq '"query" to be the SQL submitted' '.query == $sql' --arg sql "$sql"
    expect_jq '"database" and "workgroup" as strings' '(.database | type == "string") and (.workgroup | type == "string")'
    expect_jq '"state_reason" as a string or null' '.state_reason | type == "string" or type == "null"'
    expect_jq 'timestamps in ISO 8601 UTC ending with Z (or null)' \
        '[.submitted_at, .completed_at, .results_at] | map(. == null or (type == "string" and test($re))) | all' \
        --arg re "$TIMESTAMP_RE"
    expect_jq '"submitted_at" set' '.submitted_at != null'
    expect_jq '"callback" null without a callback_url, else {"url", "delivered_at", "attempts", "last_error"}' \
        'if .callback_url == null then .callback == null
         else (.callback | type == "object" and has("url") and has("delivered_at")
               and (.attempts | type == "number") and has("last_error")) end'
    expect_jq 'statistics as numbers (or null)' \
        '.statistics | [.data_scanned_bytes, .engine_execution_ms, .queue_ms, .total_execution_ms, .cost_usd]
         | map(. == null or type == "number") | all'
    if [[ $state == SUCCEEDED ]]; then
        expect_jq 'a SUCCEEDED query with completed_at, results_at and athena_query_execution_id' \
            '.completed_at != null and .results_at != null and (.athena_query_execution_id | type == "string" and length > 0)'
    fi
}

# expect_results ID: the results object API.md lists for ID, a query of the fast SQL;
# with the default fast SQL, exactly the row ["1", null, ""] (NULL distinct from "").
expect_results() {
    local id=$1
    expect_fields . "${RESULTS_FIELDS[@]}"
    expect_jq "id $id in state SUCCEEDED" '.id == $id and .state == "SUCCEEDED"' --arg id "$id"
    expect_jq '"results_at" in ISO 8601 UTC ending with Z' '.results_at | type == "string" and test($re)' \
        --arg re "$TIMESTAMP_RE"
    expect_jq '"columns" as [{"name", "type"}]' \
        '.columns | type == "array" and all(.[]; type == "object" and (.name | type == "string") and (.type | type == "string"))'
    expect_jq '"rows" as arrays of one cell per column' \
        '(.columns | length) as $n | .rows | type == "array" and all(.[]; type == "array" and length == $n)'
    expect_jq '"row_count" equal to the number of rows' '.row_count == (.rows | length)'
    if [[ -z ${EXERCISE_FAST_SQL:-} ]]; then
        expect_jq 'columns n integer, missing varchar, empty varchar' \
            '[.columns[] | [.name, .type]] == [["n", "integer"], ["missing", "varchar"], ["empty", "varchar"]]'
        expect_jq 'exactly the row ["1", null, ""] (SQL NULL as null, distinct from "")' '.rows == [["1", null, ""]]'
    fi
}

# --- states ----------------------------------------------------------------------

# legal FROM TO: the transition is one API.md allows.
legal() {
    case "$1 $2" in
        "QUEUED RUNNING" | "QUEUED SUCCEEDED" | "QUEUED FAILED" | "QUEUED CANCELLED") return 0 ;;
        "RUNNING SUCCEEDED" | "RUNNING FAILED" | "RUNNING CANCELLED") return 0 ;;
        "SUCCEEDED QUEUED" | "FAILED QUEUED" | "CANCELLED QUEUED") return 0 ;;
        *) return 1 ;;
    esac
}

# wait_state ID TARGET [PASSING...]: poll the status until it is TARGET, allowing only
# the states PASSING on the way and only legal transitions, within the deadline.
wait_state() {
    local id=$1 target=$2
    shift 2
    local passing=" $* " until=${WAIT_UNTIL:-$((SECONDS + TIMEOUT))} last="" state polls=0
    while :; do
        request GET "/query/$id/status"
        expect_status 200
        polls=$((polls + 1))
        state=$(json .state)
        if [[ -n $last && $state != "$last" ]] && ! legal "$last" "$state"; then
            fail "a legal transition while waiting for $target" "went from $last to $state"
        fi
        if [[ $state == "$target" ]]; then
            break
        fi
        if [[ $passing != *" $state "* ]]; then
            fail "state $target${*:+ (passing only through $*)}" "reached state $state"
        fi
        if ((SECONDS >= until)); then
            fail "state $target within ${TIMEOUT}s" "still $state after $polls polls"
        fi
        last=$state
        sleep 0.2
    done
    pass "$target after $polls poll(s)"
}

# cancel ID [PASSING...]: POST cancel answers 200 CANCELLED, or 202 cancel_requested and
# the status then reaches CANCELLED through the states PASSING.
cancel() {
    local id=$1
    shift
    request POST "/query/$id/cancel"
    expect_status 200 202
    if [[ $STATUS == 200 ]]; then
        expect_jq "{\"id\": \"$id\", \"state\": \"CANCELLED\"}" '.id == $id and .state == "CANCELLED"' --arg id "$id"
        pass CANCELLED
    else
        expect_jq "{\"id\": \"$id\", \"state\", \"cancel_requested\": true}" \
            '.id == $id and .cancel_requested == true and (.state | type == "string" and test("^(QUEUED|RUNNING|CANCELLED)$"))' \
            --arg id "$id"
        pass "cancel_requested, state $(json .state)"
        wait_state "$id" CANCELLED "$@"
    fi
    LIVE=${LIVE//$id/}
}

random_uuid() {
    local hex
    hex=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s-%s-4%s-a%s-%s\n' "${hex:0:8}" "${hex:8:4}" "${hex:13:3}" "${hex:17:3}" "${hex:20:12}"
}

PARALLEL_IDS=""

# --- 1. A fast query: submitted, SUCCEEDED, with a full status and its results ------
request POST /query "$(query_json "$FAST_SQL")"
FAST_ID=$(expect_accepted)
pass "$(json .state) id=$FAST_ID"
wait_state "$FAST_ID" SUCCEEDED QUEUED RUNNING
expect_status_object "$FAST_ID" "$FAST_SQL" SUCCEEDED
pass "status has every field, timestamps end with Z"
FAST_EXECUTION_ID=$(json .athena_query_execution_id)
request GET "/query/$FAST_ID/results"
expect_status 200
expect_results "$FAST_ID"
FAST_ROWS=$(jq -c '{columns, rows}' <<<"$BODY")
pass "SUCCEEDED row_count=$(json .row_count)"
# A long-poll of a finished query answers at once.
started=$SECONDS
request GET "/query/$FAST_ID/status?wait=60"
expect_status 200
expect_jq 'state SUCCEEDED' '.state == "SUCCEEDED"'
if ((SECONDS - started > 10)); then
    fail "a finished query's long-poll answered at once" "after $((SECONDS - started)) s"
fi
pass "long-poll of a finished query: SUCCEEDED at once"

# --- 2. Bad input: rejected with the right code, and no query made -----------------
# reject BODY CONTENT_TYPE STATUS CODE [FIELD]: POST /query is refused; FIELD is named
# in the message.
reject() {
    local body=$1 content_type=$2 status=$3 code=$4 field=${5:-}
    request POST /query "$body" "$content_type"
    expect_code "$status" "$code"
    if [[ -n $field ]]; then
        expect_jq "$status $code with a message naming \"$field\"" '.error.message | contains($f)' --arg f "$field"
    fi
    if [[ -n $(header Location) ]]; then
        fail "$status $code without a Location header" "Location: $(header Location)"
    fi
    pass "$code${field:+ names $field}"
}
reject '{"query": "SELECT 1"' application/json 400 invalid_json
reject '{}' application/json 400 validation_error query
reject '{"query": ""}' application/json 400 validation_error query
reject '{"query": 5}' application/json 400 validation_error query
reject '{"query": null}' application/json 400 validation_error query
reject '{"query": "SELECT 1", "extra": 1}' application/json 400 validation_error extra
reject '{"query": "SELECT 1"}' text/plain 415 unsupported_media_type
reject '{"query": "SELECT 1", "parameters": ["1", 2]}' application/json 400 validation_error 'parameters[1]'
reject '{"query": "SELECT 1", "labels": {"Bad Key": "x"}}' application/json 400 validation_error labels
reject '{"query": "SELECT 1", "workgroup": "no spaces"}' application/json 400 validation_error workgroup
# A query one byte over Athena's 262,144 in a small body, then a valid body over 1 MiB.
{
    printf '{"query": "'
    head -c 262145 /dev/zero | tr '\0' x
    printf '"}'
} >"$TMP/long-query.json"
reject "@$TMP/long-query.json" application/json 413 payload_too_large
{
    printf '{"query": "SELECT 1"}'
    head -c 1048576 /dev/zero | tr '\0' ' '
} >"$TMP/big-body.json"
# Sent as a client should send a body the server may refuse: it waits for the server's
# word first, and the 413 comes before any of the body. (Sent at once, the body can meet
# the connection closed under it, unread, and the kernel's reset lose the answer.)
EXPECT=100-continue reject "@$TMP/big-body.json" application/json 413 payload_too_large

# --- 3. Unknown ids, ids that are not lowercase UUIDs, unknown routes, wrong methods --
UNKNOWN_ID=$(random_uuid)
UPPER_ID=$(tr '[:lower:]' '[:upper:]' <<<"$FAST_ID")
for route in "GET /query/$UNKNOWN_ID/status" "GET /query/$UNKNOWN_ID/results" \
    "POST /query/$UNKNOWN_ID/refresh" "POST /query/$UNKNOWN_ID/cancel" \
    "GET /query/not-a-uuid/status" "POST /query/not-a-uuid/cancel" \
    "GET /query/$UPPER_ID/status" "GET /query/$UPPER_ID/results" \
    "GET /query/..%2F..%2Fpyproject.toml/results"; do
    request "${route%% *}" "${route#* }"
    expect_code 404 not_found
    pass not_found
done
request GET /nope
expect_code 404 ""
pass "$(json .error.code)"
request GET /query
expect_code 405 ""
pass "$(json .error.code)"
request DELETE "/query/$FAST_ID/status"
expect_code 405 ""
pass "$(json .error.code)"

# --- 4. A slow query: RUNNING refuses results and refresh, then is cancelled --------
request POST /query "$(query_json "$SLOW_SQL")"
SLOW_ID=$(expect_accepted)
LIVE="$LIVE $SLOW_ID"
pass "$(json .state) id=$SLOW_ID"
wait_state "$SLOW_ID" RUNNING QUEUED
request GET "/query/$SLOW_ID/results"
expect_code 409 query_running RUNNING
RETRY_AFTER=$(header Retry-After)
if [[ ! $RETRY_AFTER =~ ^[0-9]+$ && $RETRY_AFTER != *GMT ]]; then
    fail "409 query_running with a Retry-After header (seconds or HTTP date)" "Retry-After: $RETRY_AFTER"
fi
pass "query_running, Retry-After: $RETRY_AFTER"
request POST "/query/$SLOW_ID/refresh"
expect_code 409 query_running RUNNING
pass query_running
# Long-polls: a bad wait is a 400 naming it; wait=1 answers RUNNING once the second is
# up; one waiting when the cancel comes answers CANCELLED.
for wait in 0 61 1.5 abc "1&wait=2"; do
    request GET "/query/$SLOW_ID/status?wait=$wait"
    expect_code 400 validation_error
    expect_jq '400 validation_error naming "wait"' '.error.message | startswith("wait:")'
    pass "wait=$wait: validation_error names wait"
done
request GET "/query/$SLOW_ID/status?wait=1"
expect_status 200
expect_jq 'state RUNNING after the wait' '.state == "RUNNING"'
pass "wait=1: RUNNING"
send "$TMP/longpoll" GET "/query/$SLOW_ID/status?wait=30" &
LONGPOLL=$!
cancel "$SLOW_ID" RUNNING
wait "$LONGPOLL"
load "$TMP/longpoll" "GET /query/$SLOW_ID/status?wait=30"
expect_status 200
expect_jq 'state CANCELLED' '.state == "CANCELLED"'
pass "wait=30 waiting through the cancel: CANCELLED"
request GET "/query/$SLOW_ID/status"
expect_status 200
expect_jq 'state CANCELLED' '.state == "CANCELLED"'
pass CANCELLED
request GET "/query/$SLOW_ID/results"
expect_code 409 query_cancelled CANCELLED
pass query_cancelled
request POST "/query/$SLOW_ID/cancel"
expect_code 409 query_cancelled CANCELLED
pass query_cancelled

# --- 5. A finished query refuses cancel and stays as it was -----------------------
request POST "/query/$FAST_ID/cancel"
expect_code 409 query_finished SUCCEEDED
pass query_finished
request GET "/query/$FAST_ID/status"
expect_status 200
expect_jq 'state SUCCEEDED and the same athena_query_execution_id' \
    '.state == "SUCCEEDED" and .athena_query_execution_id == $e' --arg e "$FAST_EXECUTION_ID"
pass SUCCEEDED
request GET "/query/$FAST_ID/results"
expect_status 200
expect_results "$FAST_ID"
expect_jq 'the same columns and rows as before the cancel' '{columns, rows} == $before' --argjson before "$FAST_ROWS"
pass "same rows"

# --- 6. Refresh of the finished query: a new Athena execution and new results -----
request POST "/query/$FAST_ID/refresh"
expect_status 202
expect_jq "{\"id\": \"$FAST_ID\", \"state\": \"QUEUED\"}" '.id == $id and .state == "QUEUED"' --arg id "$FAST_ID"
pass QUEUED
request GET "/query/$FAST_ID/results"
expect_status 409 200
if [[ $STATUS == 409 ]]; then
    expect_code 409 query_running "QUEUED|RUNNING"
    pass "query_running (prior results gone)"
else
    expect_results "$FAST_ID"
    pass "SUCCEEDED (the refresh already finished)"
fi
wait_state "$FAST_ID" SUCCEEDED QUEUED RUNNING
expect_status_object "$FAST_ID" "$FAST_SQL" SUCCEEDED
expect_jq "an athena_query_execution_id other than $FAST_EXECUTION_ID" \
    '.athena_query_execution_id != $e' --arg e "$FAST_EXECUTION_ID"
pass "new athena_query_execution_id $(json .athena_query_execution_id)"
request GET "/query/$FAST_ID/results"
expect_status 200
expect_results "$FAST_ID"
pass "SUCCEEDED row_count=$(json .row_count)"

# --- 7. Refresh of the cancelled query, then cancel it again ----------------------
request POST "/query/$SLOW_ID/refresh"
expect_status 202
LIVE="$LIVE $SLOW_ID"
expect_jq "{\"id\": \"$SLOW_ID\", \"state\": \"QUEUED\"}" '.id == $id and .state == "QUEUED"' --arg id "$SLOW_ID"
pass QUEUED
cancel "$SLOW_ID" QUEUED RUNNING

# --- 8. A failing query: FAILED with a reason, which results and cancel report ------
request POST /query "$(query_json "$FAIL_SQL")"
FAIL_ID=$(expect_accepted)
pass "$(json .state) id=$FAIL_ID"
wait_state "$FAIL_ID" FAILED QUEUED RUNNING
expect_status_object "$FAIL_ID" "$FAIL_SQL" FAILED
expect_jq 'a non-empty "state_reason"' '.state_reason | type == "string" and length > 0'
REASON=$(json .state_reason)
if [[ -z ${EXERCISE_FAIL_SQL:-} ]]; then
    expect_jq '"state_reason" naming the missing table' \
        '.state_reason | contains("athenaq_exercise_missing_table")'
fi
pass "state_reason: $REASON"
expect_jq 'a FAILED query costs nothing' '.statistics.cost_usd == 0'
request GET "/query/$FAIL_ID/results"
expect_code 409 query_failed FAILED
expect_jq "409 query_failed with the reason \"$REASON\" in the message" \
    '.error.message | contains($r)' --arg r "$REASON"
pass query_failed
request POST "/query/$FAIL_ID/cancel"
expect_code 409 query_finished FAILED
pass query_finished

# --- 9. Five fast queries at once all succeed within one deadline -----------------
query_json "$FAST_SQL" >"$TMP/fast.json"
pids=()
for i in 1 2 3 4 5; do
    send "$TMP/parallel$i" POST /query "$TMP/fast.json" application/json &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid"
done
for i in 1 2 3 4 5; do
    load "$TMP/parallel$i" "POST /query"
    id=$(expect_accepted)
    if [[ $PARALLEL_IDS == *"$id"* || $id == "$FAST_ID" ]]; then
        fail "a new id" "id $id was already given to another query"
    fi
    PARALLEL_IDS="$PARALLEL_IDS $id"
    pass "$(json .state) id=$id (parallel $i/5)"
done
WAIT_UNTIL=$((SECONDS + TIMEOUT))
for id in $PARALLEL_IDS; do
    wait_state "$id" SUCCEEDED QUEUED RUNNING
done
WAIT_UNTIL=""
for id in $PARALLEL_IDS; do
    request GET "/query/$id/results"
    expect_status 200
    expect_results "$id"
    pass "SUCCEEDED row_count=$(json .row_count)"
done

# --- 10. Parameters and labels: bound to the SQL's placeholder, shown in the status --
jq -n --arg q "$PARAM_SQL" \
    '{query: $q, parameters: ["'"'it''s'"'"], labels: {exercise: "parameters", "run.id": "1"}}' \
    >"$TMP/param.json"
request POST /query "@$TMP/param.json"
PARAM_ID=$(expect_accepted)
pass "$(json .state) id=$PARAM_ID"
wait_state "$PARAM_ID" SUCCEEDED QUEUED RUNNING
expect_status_object "$PARAM_ID" "$PARAM_SQL" SUCCEEDED
expect_jq 'the parameters and labels as submitted, the default catalog' \
    '.parameters == ["'"'it''s'"'"] and .labels == {exercise: "parameters", "run.id": "1"}
     and (.catalog | type == "string")'
pass "parameters=$(jq -c .parameters <<<"$BODY") labels=$(jq -c .labels <<<"$BODY")"
request GET "/query/$PARAM_ID/results"
expect_status 200
if [[ -z ${EXERCISE_PARAM_SQL:-} ]]; then
    expect_jq "the row the parameter selects, [\"it's\"]" '.rows == [["it'"'"'s"]]'
fi
pass "row_count=$(json .row_count)"

# --- 11. The cache (max_age_seconds), and a retry with an Idempotency-Key ------------
# The fast queries SUCCEEDED a moment ago: the same SQL, taking results up to an hour old,
# is answered from athenaq's cache, and nothing starts.
request POST /query "$(jq -n --arg q "$FAST_SQL" '{query: $q, max_age_seconds: 3600}')"
expect_status 200
expect_jq '{"id", "state": "SUCCEEDED", "cached": true}' \
    '.cached == true and .state == "SUCCEEDED" and (.id | test($re))' --arg re "$UUID_RE"
pass "cached id=$(json .id)"
reject "$(jq -n --arg q "$FAST_SQL" '{query: $q, max_age_seconds: 0}')" application/json \
    400 validation_error max_age_seconds
IDEMPOTENCY_KEY="exercise-$(random_uuid)"
request POST /query "$(query_json "$FAST_SQL")"
KEYED_ID=$(expect_accepted)
pass "$(json .state) id=$KEYED_ID"
request POST /query "$(query_json "$FAST_SQL")"
expect_status 202
expect_jq "the first answer's id $KEYED_ID" '.id == $id' --arg id "$KEYED_ID"
if [[ $(header Idempotent-Replayed) != true ]]; then
    fail "Idempotent-Replayed: true" "Idempotent-Replayed: $(header Idempotent-Replayed)"
fi
pass "the same query again, Idempotent-Replayed"
request POST /query "$(query_json "$FAIL_SQL")"
expect_code 422 idempotency_key_reused
pass idempotency_key_reused
IDEMPOTENCY_KEY=$(head -c 256 /dev/zero | tr '\0' k)
reject "$(query_json "$FAST_SQL")" application/json 400 validation_error Idempotency-Key
IDEMPOTENCY_KEY=""
wait_state "$KEYED_ID" SUCCEEDED QUEUED RUNNING

# --- 11a. Times in order; timeout_seconds: the slow query stopped, FAILED -----------
# The times a status shows keep the order of a query's life (ISO text of one width
# compares as time).
request GET "/query/$FAST_ID/status"
expect_status 200
expect_jq 'submitted_at <= started_at <= completed_at <= results_at' \
    '[.submitted_at, .started_at, .completed_at, .results_at] as $t
     | ($t | all(type == "string")) and $t == ($t | sort)'
pass "submitted_at <= started_at <= completed_at <= results_at"
jq -n --arg q "$SLOW_SQL" '{query: $q, timeout_seconds: 1}' >"$TMP/timeout.json"
request POST /query "@$TMP/timeout.json"
TIMEOUT_ID=$(expect_accepted)
LIVE="$LIVE $TIMEOUT_ID"
pass "$(json .state) id=$TIMEOUT_ID"
wait_state "$TIMEOUT_ID" FAILED QUEUED RUNNING
LIVE=${LIVE//$TIMEOUT_ID/}
expect_jq 'state_reason "timed out after 1 s", timeout_seconds 1, timeout_at after submitted_at' \
    '.state_reason == "timed out after 1 s" and .timeout_seconds == 1
     and (.timeout_at | type == "string" and test($ts)) and .timeout_at > .submitted_at' \
    --arg ts "$TIMESTAMP_RE"
pass "state_reason: $(json .state_reason), timeout_at=$(json .timeout_at)"
request GET "/query/$TIMEOUT_ID/history"
expect_status 200
expect_jq 'a last move to FAILED by timeout' \
    '.transitions[-1] | .to == "FAILED" and .by == "timeout" and .reason == "timed out after 1 s"'
pass "FAILED by $(json '.transitions[-1].by')"

# --- 12. With a key: none or a wrong one answers 401, the status names the owner ----
if [[ -n ${ATHENAQ_KEY:-} ]]; then
    request GET "/query/$FAST_ID/status"
    expect_status 200
    if [[ $(json .owner) == anonymous ]]; then
        fail "the key's name as owner" "owner: anonymous"
    fi
    pass "owner=$(json .owner)"
    KEY_HEADER=$EXERCISE_HEADER
    for EXERCISE_HEADER in "" "Authorization: Bearer aq_exercise-wrong-key"; do
        for route in "GET /query/$FAST_ID/status" "POST /query/$FAST_ID/refresh"; do
            request "${route%% *}" "${route#* }"
            expect_code 401 unauthorized
            if [[ $(header WWW-Authenticate) != Bearer* ]]; then
                fail "a WWW-Authenticate: Bearer header" "WWW-Authenticate: $(header WWW-Authenticate)"
            fi
            pass "unauthorized${EXERCISE_HEADER:+ (wrong key)}"
        done
    done
    EXERCISE_HEADER=$KEY_HEADER
    request GET /health
    expect_status 200
    pass "health needs no key"
fi

# --- 13. Finding queries again: the listing, a history, the usage -------------------
request GET "/queries?limit=2"
expect_status 200
expect_jq 'at most 2 status objects, newest first, and a next path or null' \
    '(.queries | type == "array" and length <= 2 and all(.[]; has("id") and has("statistics")))
     and (.next == null or (.next | type == "string" and startswith("/queries?")))
     and ([.queries[].submitted_at] == ([.queries[].submitted_at] | sort | reverse))'
pass "$(json '.queries | length') queries, next=$(json '.next != null')"
if [[ $(json .next) != null ]]; then
    FIRST_PAGE=$(json '[.queries[].id] | join(" ")')
    request GET "$(json .next)"
    expect_status 200
    expect_jq 'a following page that repeats none of the first' \
        '[.queries[].id] | all(. as $id | ($first | split(" ") | index($id)) == null)' --arg first "$FIRST_PAGE"
    pass "next page: $(json '.queries | length') queries"
fi
request GET "/queries?state=FAILED&limit=500"
expect_status 200
expect_jq "the failed query $FAIL_ID among the FAILED ones" \
    'any(.queries[]; .id == $id) and all(.queries[]; .state == "FAILED")' --arg id "$FAIL_ID"
pass "state=FAILED lists $FAIL_ID"
request GET "/queries?label=exercise:parameters&limit=500"
expect_status 200
expect_jq "the labelled query $PARAM_ID among those labelled exercise:parameters" \
    'any(.queries[]; .id == $id) and all(.queries[]; .labels.exercise == "parameters")' --arg id "$PARAM_ID"
pass "label=exercise:parameters lists $PARAM_ID"
for bad in limit=0 state=DONE label=no-colon since=yesterday "cursor=not-a-cursor"; do
    request GET "/queries?$bad"
    expect_code 400 validation_error
    expect_jq "a message naming ${bad%%=*}" '.error.message | startswith($p)' --arg p "${bad%%=*}: "
    pass "${bad%%=*} refused"
done
request GET "/query/$FAST_ID/history"
expect_status 200
expect_jq 'every run of the refreshed query, oldest first, from a submit' \
    '.id == $id and .transitions[0].event == "submit" and .transitions[0].from == null
     and any(.transitions[]; .event == "refresh" and .run == 2)
     and ([.transitions[].at] == ([.transitions[].at] | sort))' --arg id "$FAST_ID"
pass "$(json '.transitions | length') transitions, $(json '.transitions[-1].run') runs"
request GET "/query/$UNKNOWN_ID/history"
expect_code 404 not_found
pass not_found
for group_by in owner day workgroup; do
    request GET "/usage?group_by=$group_by"
    expect_status 200
    expect_jq 'groups of counts, bytes and cost' \
        '.groups | length > 0 and all(.[]; (.key | type == "string")
            and ([.queries, .succeeded, .failed, .cancelled, .data_scanned_bytes, .cost_usd]
                 | all(type == "number")) and .queries >= .succeeded + .failed + .cancelled)'
    pass "by $group_by: $(json '[.groups[].key] | join(", ")')"
done
request GET "/usage?group_by=month"
expect_code 400 validation_error
pass "group_by refused"

# --- 14. Metrics: the Prometheus text format (a key needs the scope metrics) ---------
request GET /metrics
if [[ -n ${ATHENAQ_KEY:-} && $STATUS == 403 ]]; then
    expect_code 403 forbidden
    expect_jq 'a message naming the scope' '.error.message | endswith("metrics")'
    pass "a key without the scope metrics"
else
    if [[ $STATUS != 200 ]]; then
        fail 200
    fi
    if [[ $(header Content-Type) != text/plain* ]]; then
        fail "Content-Type text/plain" "Content-Type: $(header Content-Type)"
    fi
    for name in 'athenaq_queries{state="SUCCEEDED"}' 'athenaq_transitions_total{event="submit"}' \
        'athenaq_http_request_duration_seconds_count{method="POST",route="/query",status="202"}'; do
        if ! grep -qF "$name " <<<"$BODY"; then
            fail "a sample $name"
        fi
    done
    if grep -qF "$FAST_ID" <<<"$BODY"; then
        fail "no query id in a label" "$FAST_ID is in one"
    fi
    pass "$(grep -c '^athenaq_' <<<"$BODY") athenaq samples"
fi

echo "exercise: all $CHECKS checks passed"
