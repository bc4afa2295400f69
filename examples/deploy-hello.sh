#!/bin/sh
# Deploys examples/hello-app through deployd's built-in executor, the way `scalingo deploy` does:
# pack the folder, POST /v1/sources, PUT the archive to the upload URL, trigger a deployment
# from the download URL, then wait and print its output.
#
#   DEPLOYD_TOKEN=$(cat data/admin-token) examples/deploy-hello.sh [app-name]
#
# DEPLOYD_URL defaults to http://127.0.0.1:8080 (deployd's default listen address).
set -eu
url=${DEPLOYD_URL:-http://127.0.0.1:8080}
token=${DEPLOYD_TOKEN:?set DEPLOYD_TOKEN to an API token (on first start: DATA/admin-token)}
app=${1:-hello-app}
here=$(cd "$(dirname "$0")" && pwd)
archive=$(mktemp "${TMPDIR:-/tmp}/hello-app.XXXXXX")
trap 'rm -f "$archive"' EXIT

# One folder at the archive's root, like GitHub's archive/<ref>.tar.gz.
tar czf "$archive" -C "$here" hello-app

json() { curl -fsS -u ":$token" -H 'Content-Type: application/json' "$@"; }
field() { sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }

# Create the app (an existing one is fine).
json -d "{\"app\":{\"name\":\"$app\"}}" "$url/v1/apps" >/dev/null 2>&1 || true

source=$(json -X POST -d '{}' "$url/v1/sources")
upload=$(printf '%s' "$source" | field upload_url)
download=$(printf '%s' "$source" | field download_url)
curl -fsS -T "$archive" -H 'Content-Type: application/x-gzip' "$upload" >/dev/null

deployment=$(json -d "{\"deployment\":{\"git_ref\":null,\"source_url\":\"$download\"}}" \
  "$url/v1/apps/$app/deployments")
# links.output is the one unambiguous URL in the answer; the deployment is its parent.
output=$(printf '%s' "$deployment" | field output)
echo "deployment ${output%/output}: $(printf '%s' "$deployment" | field status)"

while :; do
  status=$(json "${output%/output}" | field status)
  case $status in
    queued|building|pushing|starting) sleep 1 ;;
    *) break ;;
  esac
done
json "$output"
echo "status: $status"
test "$status" = success
