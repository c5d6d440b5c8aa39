#!/bin/sh
# prepare-dashboards.sh SRC DST: copies the project's dashboards for Grafana's
# file provisioning.
#
# dashboards/*.json are exports for the "Import" dialog: their panels name
# the datasource as ${DS_PROMETHEUS}, which only the import dialog fills in;
# file provisioning leaves it as is ("Datasource ${DS_PROMETHEUS} was not
# found", grafana/grafana#10786). This puts the provisioned datasource's uid
# (grafana/provisioning/datasources/prometheus.yaml) in its place.
set -eu
src=${1:-/dashboards}
dst=${2:-/provisioned}
uid=${DATASOURCE_UID:-prometheus}
mkdir -p "$dst"
for f in "$src"/*.json; do
    sed "s/[\$]{DS_PROMETHEUS}/$uid/g" "$f" >"$dst/$(basename "$f")"
done
echo "prepare-dashboards: $(ls "$dst" | wc -l) dashboard(s) in $dst"
