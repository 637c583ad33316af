#!/usr/bin/env bash
# Debian tools the tests use to check outputs as others would open them: headless Chromium (HTML
# reports), poppler's pdftoppm (PDF), dicom3tools' dciodvfy and dcmtk's dcmdump (DICOM outputs), R's
# pROC (independent DeLong), openssl (a test certificate for the TLS test), and a real PACS for the round-trip tests (Orthanc + its DICOMweb plugin;
# the tests start their own server, never the system service). Installed only when missing and only
# when we are root with apt-get; tests that need a missing tool skip with a reason (and fail under CI=true).
set -uo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v pdftoppm >/dev/null || need+=(poppler-utils)
command -v dciodvfy >/dev/null || need+=(dicom3tools)
command -v dcmdump >/dev/null || need+=(dcmtk)
command -v openssl >/dev/null || need+=(openssl)
command -v Rscript >/dev/null || need+=(r-base-core)
Rscript -e 'library(pROC)' >/dev/null 2>&1 || need+=(r-cran-proc)
command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1 \
  || need+=(orthanc-dicomweb)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >/dev/null 2>&1 \
    || echo "warning: could not install ${need[*]}; tests needing them will skip (fail under CI=true)"
fi
exit 0
