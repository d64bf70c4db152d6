#!/usr/bin/env bash
# Shared Yocto cache maintenance: retention of the sstate cache and the
# download directory by age and by size. DRY RUN by default: prints what it
# would delete; pass --apply to delete.
#
#   devenv/cache-maint.sh                          # report (inside the build container)
#   devenv/cache-maint.sh --apply                  # delete
#   devenv/cache-maint.sh --sstate-days 30 --sstate-max-size 150G --dl-days 180 --apply
#
# Steps, in order:
#  1. OE-Core's scripts/sstate-cache-management.py --remove-duplicated
#     --remove-orphans: keeps only the newest object per recipe/task/arch.
#  2. Age: sstate objects whose mtime is older than --sstate-days (BitBake
#     touches every sstate object it reuses, so mtime = last use), and
#     downloads not modified for --dl-days (and their .done stamps).
#  3. Size: if the sstate cache is still above --sstate-max-size, delete the
#     least recently used objects until it is below.
# Never run --apply while a build using the same caches is in progress.
set -euo pipefail

sstate_dir="${SSTATE_DIR:-/cache/sstate-cache}"
dl_dir="${DL_DIR:-/cache/downloads}"
sstate_days=30
dl_days=365
sstate_max_size=200G
apply=0
oe_core="${OE_CORE:-}"

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
  cat <<USAGE
Options:
  --sstate-dir DIR      (default \$SSTATE_DIR or /cache/sstate-cache)
  --dl-dir DIR          (default \$DL_DIR or /cache/downloads)
  --sstate-days N       delete sstate objects unused for N days (default $sstate_days)
  --dl-days N           delete downloads unused for N days (default $dl_days, 0 = keep)
  --sstate-max-size S   then trim LRU objects until sstate <= S (IEC suffixes: 500M, 200G;
                        default $sstate_max_size, 0 = no cap)
  --oe-core DIR         openembedded-core checkout for sstate-cache-management.py
                        (default \$OE_CORE or the first build/*/openembedded-core)
  --apply               really delete (default: dry run)
USAGE
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --sstate-dir) sstate_dir="$2"; shift 2 ;;
    --dl-dir) dl_dir="$2"; shift 2 ;;
    --sstate-days) sstate_days="$2"; shift 2 ;;
    --dl-days) dl_days="$2"; shift 2 ;;
    --sstate-max-size) sstate_max_size="$2"; shift 2 ;;
    --oe-core) oe_core="$2"; shift 2 ;;
    --apply) apply=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "cache-maint.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

for n in "$sstate_days" "$dl_days"; do
  case "$n" in
    '' | *[!0-9]*) echo "cache-maint.sh: days must be a number, got '$n'" >&2; exit 2 ;;
  esac
done
if ! cap=$(numfmt --from=iec "$sstate_max_size" 2>/dev/null); then
  echo "cache-maint.sh: bad size '$sstate_max_size' (e.g. 500M, 200G)" >&2
  exit 2
fi

mode="DRY RUN"
[ "$apply" = 1 ] && mode="APPLY"
echo "cache-maint.sh [$mode] sstate=$sstate_dir downloads=$dl_dir"

human() { numfmt --to=iec --suffix=B "$1" 2>/dev/null || echo "${1}B"; }
du_bytes() { if [ -d "$1" ]; then du -sb "$1" | cut -f1; else echo 0; fi; }

# delete FILE...: remove (or list, in dry-run mode) files, summing sizes.
deleted_bytes=0
delete() {
  local f size
  for f in "$@"; do
    [ -e "$f" ] || continue
    size=$(stat -c %s "$f")
    deleted_bytes=$((deleted_bytes + size))
    if [ "$apply" = 1 ]; then
      rm -f -- "$f"
    else
      echo "would delete: $f"
    fi
  done
}

echo "before: sstate $(human "$(du_bytes "$sstate_dir")"), downloads $(human "$(du_bytes "$dl_dir")")"

# 1. duplicates and orphans (OE-Core's own tool)
if [ -d "$sstate_dir" ]; then
  if [ -z "$oe_core" ]; then
    for cand in build/*/openembedded-core /work/k3svirt/build/*/openembedded-core; do
      if [ -x "$cand/scripts/sstate-cache-management.py" ]; then
        oe_core="$cand"
        break
      fi
    done
  fi
  if [ -n "$oe_core" ] && [ -x "$oe_core/scripts/sstate-cache-management.py" ]; then
    scm=("$oe_core/scripts/sstate-cache-management.py" --cache-dir="$sstate_dir"
      --remove-duplicated --remove-orphans --yes)
    if [ "$apply" = 1 ]; then
      "${scm[@]}"
    else
      "${scm[@]}" --dry-run
    fi
  else
    echo "note: no openembedded-core checkout found (--oe-core); skipping duplicate/orphan removal"
  fi
fi

# 2. age-based retention
if [ -d "$sstate_dir" ] && [ "$sstate_days" -gt 0 ]; then
  echo "sstate objects unused for more than $sstate_days days:"
  mapfile -d '' old < <(find "$sstate_dir" -type f -name 'sstate:*' -mtime "+$sstate_days" -print0)
  delete "${old[@]}"
  echo "  ${#old[@]} files"
fi
if [ -d "$dl_dir" ] && [ "$dl_days" -gt 0 ]; then
  echo "downloads unused for more than $dl_days days:"
  # Age whole tarballs with their .done stamps (the fetcher re-downloads
  # when .done is gone); a detached signature (.sig/.asc) goes with its
  # tarball, and one whose tarball is gone goes by itself.
  mapfile -d '' old < <(find "$dl_dir" -maxdepth 1 -type f ! -name '*.done' ! -name '*.lock' \
    ! -name '*.sig' ! -name '*.asc' -mtime "+$dl_days" -print0)
  for f in "${old[@]}"; do
    delete "$f" "$f.done" "$f.sig" "$f.asc"
  done
  echo "  ${#old[@]} files"
  mapfile -d '' sigs < <(find "$dl_dir" -maxdepth 1 -type f \( -name '*.sig' -o -name '*.asc' \) -print0)
  orphans=0
  for s in "${sigs[@]}"; do
    if [ ! -e "${s%.*}" ]; then
      delete "$s"
      orphans=$((orphans + 1))
    fi
  done
  echo "  $orphans orphaned signature files"
  # git2/ mirrors: a bare clone per repository, touched (FETCH_HEAD) on
  # every fetch. Drop whole clones not fetched for --dl-days, with the
  # git2_*.tar.gz mirror tarball and .done stamp of the same name.
  if [ -d "$dl_dir/git2" ]; then
    mapfile -d '' clones < <(find "$dl_dir/git2" -mindepth 1 -maxdepth 1 -type d -print0)
    aged=0
    for c in "${clones[@]}"; do
      stamp="$c/FETCH_HEAD"
      [ -e "$stamp" ] || stamp="$c"
      if [ -n "$(find "$stamp" -maxdepth 0 -mtime "+$dl_days" -print)" ]; then
        mapfile -d '' inner < <(find "$c" -type f -print0)
        delete "${inner[@]}"
        delete "$dl_dir/git2_$(basename "$c").tar.gz" "$dl_dir/git2_$(basename "$c").tar.gz.done"
        [ "$apply" = 1 ] && rm -rf -- "$c"
        aged=$((aged + 1))
      fi
    done
    echo "  $aged git2 mirrors"
  fi
fi

# 3. size cap, least recently used first
if [ -d "$sstate_dir" ] && [ "$cap" -gt 0 ]; then
  total=$(( $(du_bytes "$sstate_dir") - (apply ? 0 : deleted_bytes) ))
  if [ "$total" -gt "$cap" ]; then
    echo "sstate is $(human "$total") > cap $(human "$cap"): trimming least recently used"
    while IFS= read -r -d '' line; do
      [ "$total" -le "$cap" ] && break
      f="${line#* }"
      [ -e "$f" ] || continue
      size=$(stat -c %s "$f")
      delete "$f" "$f.siginfo"
      total=$((total - size))
    done < <(find "$sstate_dir" -type f -name 'sstate:*' ! -name '*.siginfo' -printf '%T@ %p\0' | sort -z -n)
  fi
fi

echo "$([ "$apply" = 1 ] && echo freed || echo would free): $(human "$deleted_bytes")"
if [ "$apply" = 1 ]; then
  # Empty hash directories left behind.
  [ -d "$sstate_dir" ] && find "$sstate_dir" -mindepth 1 -type d -empty -delete
  echo "after: sstate $(human "$(du_bytes "$sstate_dir")"), downloads $(human "$(du_bytes "$dl_dir")")"
fi
