# Sourced by tools/bench-copy.sh and tools/bench-mirror.sh: the shared dataset cache.
#
# ensure_dataset KIND: $DATA/KIND exists and was made by tools/gen-dataset.py with this
# scale, seed and generator version (recorded in $DATA/KIND.stamp), else it is regenerated.
# Needs DATA, SCALE, SEED, TOOLS_DIR and the caller's log, die and mass_delete.
# shellcheck shell=bash

GEN_SHA=$(sha256sum "$TOOLS_DIR/gen-dataset.py" | cut -c1-16)
ensure_dataset() {
    local kind=$1 dir="$DATA/$1" stamp="$DATA/$1.stamp" want
    want="kind=$kind scale=$SCALE seed=$SEED generator=$GEN_SHA"
    if [[ -f "$stamp" && -d "$dir" && "$(cat "$stamp")" == "$want" ]]; then
        log "dataset $kind: cached ($dir)"
        return
    fi
    log "dataset $kind: generating in $dir ($want)"
    if [[ -e "$dir" || -e "$dir.tmp" ]]; then mass_delete "$dir" "$dir.tmp"; fi
    rm -f "$stamp"
    python3 "$TOOLS_DIR/gen-dataset.py" "$kind" "$dir" --scale "$SCALE" --seed "$SEED" ||
        die "generating dataset $kind failed"
    echo "$want" >"$stamp"
}
