#!/usr/bin/env bash
# The gallery-store part of `make demo` (scripts/demo.sh runs it after the bundles exist):
# put the test gallery into a store with cameras and capture times, then a filtered
# query, a "more like this", and a retention delete with compaction and verify.
#
# usage: scripts/demo_store.sh DEMO_DIR PROVIDER   (DEMO_DIR holds synth/, bundle-fp32/)
set -euo pipefail
cd "$(dirname "$0")/.."
demo=${1:?usage: demo_store.sh DEMO_DIR PROVIDER}
provider=${2:-cpu}
sen=target/release/sen
store="$demo/store"
bundle="$demo/bundle-fp32"
list="$demo/synth/store-list.jsonl" # paths in a list are relative to its folder

echo "   each test image gets a camera (cam-1..cam-4) and a capture time between 08:00 and"
echo "   18:00 UTC on 2026-11-27: a fixed rule over the synthetic split, so a person's crops"
echo "   are spread over cameras and the day"
rm -rf "$store"
python3 - "$demo/synth" > "$list" <<'PY'
import json, sys
recs = [r for r in json.load(open(f"{sys.argv[1]}/reid_raw.json")) if r["split"] == "test"]
for i, r in enumerate(recs):
    minute = 8 * 60 + (i * 37) % 600  # 08:00 .. 17:59
    print(json.dumps({"path": f"imgs/{r['file_path']}",
                      "camera": f"cam-{1 + (i * 7 + r['id']) % 4}",
                      "time": f"2026-11-27T{minute // 60:02d}:{minute % 60:02d}:00Z",
                      "pid": r["id"]}))
PY
$sen store create "$store" --bundle "$bundle" --f16
$sen store add "$store" --bundle "$bundle" --list "$list" --provider "$provider" --json \
  > "$demo/store-add.json"
python3 - "$demo/store-add.json" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
print(f"added {a['added']} rows (ids {a['first_id']}..{a['last_id']}), skipped {len(a['skipped'])}")
PY
$sen store stats "$store"

show() { # results JSON, the pid to mark
  python3 - "$1" "$2" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    mark = "  <- the same person" if str(r["pid"]) == sys.argv[2] else ""
    print(f"  {r['rank']}. {r['score']:.3f}  id {r['id']:<4} {r['camera']:<6} {r['time']}  pid {r['pid']}{mark}")
PY
}

# a caption written for a person who has a crop inside the filter below
read -r want q < <(python3 - "$list" "$demo/synth" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
inside = [r for r in rows if r["camera"] in ("cam-2", "cam-3") and "10:00" <= r["time"][11:16] < "14:00"]
caps = {r["id"]: r["captions"][0] for r in json.load(open(f"{sys.argv[2]}/reid_raw.json"))}
print(inside[0]["pid"], caps[inside[0]["pid"]])
PY
)
echo
echo "-- \"$q\" (written for person $want)"
echo "   on cam-2 or cam-3, 10:00 to 14:00 (sen store search --camera cam-2 --camera cam-3 --from --to)"
$sen store search "$store" --bundle "$bundle" "$q" -k 5 --camera cam-2 --camera cam-3 \
  --from 2026-11-27T10:00:00Z --to 2026-11-27T14:00:00Z --provider "$provider" --json \
  > "$demo/store-filtered.json"
show "$demo/store-filtered.json" "$want"

read -r like like_pid < <(python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["results"][0]; print(r["id"], r["pid"])' \
  "$demo/store-filtered.json")
echo
echo "-- more like row $like (person $like_pid): every camera, all day (sen store search --like $like)"
$sen store search "$store" --bundle "$bundle" --like "$like" -k 5 --provider "$provider" --json \
  > "$demo/store-like.json"
show "$demo/store-like.json" "$like_pid"

echo
echo "-- retention: delete what was captured before 12:00, compact (erases it from the files), verify"
$sen store delete "$store" --before 2026-11-27T12:00:00Z --json
$sen store compact "$store"
$sen store verify "$store"
$sen store stats "$store"
