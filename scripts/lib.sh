# Shared by scripts/demo and scripts/test: install what is missing, from the package registries.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MOTO_VERSION="5.2.1"
export CHARLIE_ROOT="$ROOT"
export CHARLIE_PYTHON="$ROOT/.venv/bin/python"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Terraform: the provider from the machine's mirror when there is one, else the registry.
if [ -d /opt/tf-plugins ]; then
  export TF_CLI_CONFIG_FILE="$ROOT/infra/terraformrc.mirror"
elif [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -f "$TF_CLI_CONFIG_FILE" ]; then
  unset TF_CLI_CONFIG_FILE
fi

say() { printf '\n==> %s\n' "$*"; }

# Debian packages, installed (once) when something needs them: apt_install WHAT APT-ARGS…
# (WHAT says what they are for when there is no apt-get to install them with).
apt_install() {
  local what=$1 names=() arg
  shift
  for arg in "$@"; do [[ $arg == -* ]] || names+=("$arg"); done
  if ! command -v apt-get >/dev/null; then
    echo "$what: install ${names[*]} with your package manager" >&2
    exit 1
  fi
  say "Installing Debian's ${names[*]} ($what; once)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Installed only: a package's own service is not started (the tests start their own).
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# The emulator (moto server) lives in a project-local virtualenv.
ensure_python_env() {
  if "$CHARLIE_PYTHON" -c "import moto, flask, werkzeug; assert moto.__version__ == '$MOTO_VERSION'" 2>/dev/null; then
    return
  fi
  local py
  py=$(command -v python3.11 || command -v python3 || true)
  if [ -z "$py" ]; then
    echo "python3 is required (with venv): install it with your package manager" >&2
    exit 1
  fi
  say "Creating .venv with moto[server]==$MOTO_VERSION (once)"
  "$py" -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
}

# A tool from PyPI in a project-local virtualenv of its own (so no two tools' dependencies
# meet), made once: ensure_venv DIR PACKAGE VERSION.
ensure_venv() {
  local dir="$ROOT/$1" package=$2 version=$3
  if "$dir/bin/python" -c "import importlib.metadata as m; assert m.version('$package') == '$version'" 2>/dev/null; then
    return
  fi
  say "Creating $1 with $package==$version (once)"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$package==$version"
}

# schemathesis (the control API's contract test) in its own virtualenv, so its dependencies
# never meet moto's.
SCHEMATHESIS_VERSION="4.32.5"
export CHARLIE_SCHEMATHESIS="$ROOT/.venv-schemathesis/bin/schemathesis"
ensure_schemathesis() { ensure_venv .venv-schemathesis schemathesis "$SCHEMATHESIS_VERSION"; }

# aiosmtpd (the real SMTP server the relay's outbox is tested against) in its own virtualenv.
AIOSMTPD_VERSION="1.4.6"
export CHARLIE_AIOSMTPD_PYTHON="$ROOT/.venv-smtp/bin/python"
ensure_aiosmtpd() { ensure_venv .venv-smtp aiosmtpd "$AIOSMTPD_VERSION"; }

# cargo-lambda (and the zig it cross-links with) for the deployable zips (scripts/package).
CARGO_LAMBDA_VERSION="1.9.2"
# (The package depends on ziglang, which pip installs with it.)
ensure_cargo_lambda() {
  ensure_venv .venv-lambda cargo-lambda "$CARGO_LAMBDA_VERSION"
  export PATH="$ROOT/.venv-lambda/bin:$PATH"
}

# checkov (the Terraform's static security checks) in its own virtualenv as well.
CHECKOV_VERSION="3.3.30"
export CHARLIE_CHECKOV="$ROOT/.venv-checkov/bin/checkov"
ensure_checkov() { ensure_venv .venv-checkov checkov "$CHECKOV_VERSION"; }

# checkov on infra/: every check passes or is skipped at its resource with a written reason
# (#checkov:skip=ID:reason); any failure fails the suite. --skip-download: no call to Prisma
# Cloud for guidelines (offline, and nothing is sent anywhere).
# `terraform validate` of the AWS root (infra/envs/aws), which nothing here applies: in a
# copy, so its committed lock file and the tree stay as they are.
validate_aws_root() {
  local dir
  dir=$(mktemp -d)
  mkdir -p "$dir/infra/envs"
  cp -r "$ROOT/infra/modules" "$dir/infra/"
  cp -r "$ROOT/infra/envs/aws" "$dir/infra/envs/"
  (cd "$dir/infra/envs/aws" && terraform init -backend=false -input=false >/dev/null && terraform validate -no-color)
  local rc=$?
  rm -rf "$dir"
  return $rc
}

run_checkov() {
  "$CHARLIE_CHECKOV" --directory "$ROOT/infra" --framework terraform --compact --quiet --skip-download
}

# PostgreSQL's server binaries (the second row store), from Debian's packages when missing.
ensure_postgres() {
  if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -n "${CHARLIE_PG_BIN:-}" ]; then
    return
  fi
  apt_install "PostgreSQL's server (or set CHARLIE_PG_BIN)" postgresql
}

# Dovecot (the relay's IMAP source is tested against it), from Debian's packages when missing.
ensure_dovecot() {
  if command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; then
    return
  fi
  apt_install "Dovecot, for the relay's IMAP test" dovecot-imapd
}

# A Secret Service (the relay's OS keyring on Linux is tested against a throwaway one): D-Bus's
# daemon, GNOME Keyring and libsecret's secret-tool, from Debian's packages when missing.
ensure_secret_service() {
  if command -v dbus-daemon >/dev/null && command -v gnome-keyring-daemon >/dev/null && command -v secret-tool >/dev/null; then
    return
  fi
  apt_install "a Secret Service, for the relay's keyring test" --no-install-recommends dbus-daemon gnome-keyring libsecret-tools
}

ensure_tools() {
  local missing=()
  command -v cargo >/dev/null || missing+=("cargo (https://rustup.rs)")
  command -v terraform >/dev/null || missing+=("terraform >= 1.6")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}" >&2
    exit 1
  fi
}

# The Windows target's standard library (rustup), to type-check and lint the Outlook source's
# COM code (relay/outlook/src/com.rs): nothing here can link or run it.
WINDOWS_TARGET="x86_64-pc-windows-gnu"
ensure_windows_target() {
  if rustup target list --installed 2>/dev/null | grep -qx "$WINDOWS_TARGET"; then
    return
  fi
  say "Installing the Rust target $WINDOWS_TARGET (once; to type-check the Outlook COM code)"
  rustup target add "$WINDOWS_TARGET"
}

# Wine (Debian's wine64) and the mingw-w64 linker, to link charlie-outlook's Windows tests and
# run them: COM started, Outlook's absence said, the COM code walking a fake of Outlook's
# object model. Outlook itself cannot run here.
WINE="/usr/lib/wine/wine64"
WINESERVER="/usr/lib/wine/wineserver"   # not on PATH in Debian's packaging
ensure_wine() {
  if [ -x "$WINE" ] && command -v x86_64-w64-mingw32-gcc >/dev/null; then
    return
  fi
  apt_install "Wine and mingw-w64, for the relay's Windows tests" --no-install-recommends wine64 gcc-mingw-w64-x86-64-win32
}

# The relay's Windows build, which a scenario runs under Wine.
build_windows_relay() {
  say "Building charlie-relay for $WINDOWS_TARGET (a scenario runs it under Wine)"
  cargo build -p charlie-relay --target "$WINDOWS_TARGET" --locked
}

# charlie-outlook's tests built for Windows and run under Wine, in a throwaway prefix (the
# scenarios make theirs with charlie_local::wine).
windows_tests() {
  say "cargo test -p charlie-outlook for $WINDOWS_TARGET, under Wine (the Outlook COM code against a fake of Outlook's object model)"
  local prefix
  prefix=$(mktemp -d "${TMPDIR:-/tmp}/charlie-wine.XXXXXX")
  (
    export WINEPREFIX="$prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
    trap '"$WINESERVER" -k >/dev/null 2>&1; rm -rf "$WINEPREFIX"' EXIT
    "$WINE" wineboot --init >/dev/null 2>&1
    "$WINESERVER" -w
    # Rust's std needs ProcessPrng, which Wine 8 lacks: the harness's stand-in (see the file).
    x86_64-w64-mingw32-gcc -O2 -shared -o "$prefix/drive_c/windows/system32/bcryptprimitives.dll" \
      relay/outlook/wine/bcryptprimitives.c -ladvapi32
    CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$WINE" \
      cargo test -p charlie-outlook --target "$WINDOWS_TARGET" --locked
  )
}

# cargo-fuzz (the fuzz targets' runner), from crates.io when missing.
CARGO_FUZZ_VERSION="0.13.2"
ensure_cargo_fuzz() {
  if cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    return
  fi
  say "Installing cargo-fuzz $CARGO_FUZZ_VERSION (once)"
  cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
}

# The dashboard's browser test: Debian's Chromium, and playwright-core (pinned in
# tests/browser/package-lock.json) from the npm registry, each installed once when missing.
ensure_browser() {
  if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
    apt_install "Chromium, for the dashboard's browser test (or set CHROMIUM)" chromium
  fi
  if ! command -v npm >/dev/null; then
    echo "Node.js and npm are required for the dashboard's browser test: install them" >&2
    exit 1
  fi
  if [ ! -d "$ROOT/tests/browser/node_modules/playwright-core" ]; then
    say "Installing playwright-core into tests/browser (once)"
    (cd "$ROOT/tests/browser" && npm ci --no-audit --no-fund --silent)
  fi
}

# cargo-deny (advisories, bans, licenses, sources), from crates.io when missing.
CARGO_DENY_VERSION="0.20.2"
ensure_cargo_deny() {
  if cargo deny --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
    return
  fi
  say "Installing cargo-deny $CARGO_DENY_VERSION (once)"
  cargo install --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION"
}

# cargo deny check with deny.toml. A snapshot of the RustSec database (a clone, `advisory-db`,
# or a git bundle, `advisory-db.bundle`) in a `shared` folder beside the project, beside one of
# its parent folders, or in /work/shared (where this machine keeps it, also for CI's clean
# clones elsewhere) is cloned into a throwaway folder and the check runs offline against it.
# Without one, cargo-deny fetches the database as usual; when that fails (no network), the
# database an earlier fetch left in $CARGO_HOME/advisory-dbs is used offline, saying so.
advisory_snapshot() {
  local dir="$ROOT" candidate
  while [ "$dir" != "/" ]; do
    dir=$(dirname "$dir")
    for candidate in "$dir/shared/advisory-db" "$dir/shared/advisory-db.bundle"; do
      [ -e "$candidate" ] && { echo "$candidate"; return; }
    done
  done
  for candidate in /work/shared/advisory-db /work/shared/advisory-db.bundle; do
    [ -e "$candidate" ] && { echo "$candidate"; return; }
  done
}

deny_check() {
  local dbs="" meta args=() from
  meta=$(mktemp)
  cargo metadata --format-version 1 --locked --all-features >"$meta"
  from=$(advisory_snapshot)
  # The folder name cargo-deny gives the default database (github.com/rustsec/advisory-db).
  local name=advisory-db-3157b0e258782691
  if [ -n "$from" ]; then
    dbs=$(mktemp -d)
    git -c init.defaultBranch=main clone --quiet "$from" "$dbs/$name"
    say "cargo deny check (offline, advisories from $from of $(git -C "$dbs/$name" log -1 --format=%cs))"
    export CHARLIE_ADVISORY_DB_PATH="$dbs"
    args=(--offline)
  elif ! cargo deny fetch db >/dev/null 2>&1; then
    local cached="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs/$name"
    if [ ! -d "$cached" ]; then
      echo "cargo deny: no advisory snapshot, the database cannot be fetched and none was fetched before" >&2
      rm -f "$meta"
      return 1
    fi
    say "cargo deny check (offline: the database could not be fetched; using the one fetched on $(git -C "$cached" log -1 --format=%cs))"
    args=(--offline)
  else
    say "cargo deny check"
  fi
  # The whole report only when it fails; else its verdict and how many duplicates it listed.
  local status=0 log
  log=$(mktemp)
  cargo deny "${args[@]}" --metadata-path "$meta" check --hide-inclusion-graph >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    cat "$log"
  else
    echo "$(grep -c '^warning\[duplicate\]' "$log") crates in two versions (listed, allowed by deny.toml)"
    tail -n 1 "$log"
  fi
  rm -rf "$meta" "$log" ${dbs:+"$dbs"}
  return "$status"
}

# Runs each fuzz target for $1 seconds from the committed seed corpus (new inputs go to a
# throwaway folder); a crash fails the run and leaves its input under fuzz/artifacts/.
# Every fuzz target (fuzz/fuzz_targets), each run briefly by the suite.
FUZZ_TARGETS=(csv_ingest csv_encodings definitions webhook_body raw_mail sender_auth relay_auth
  links_verify dashboard_input event_bodies api_event)

# Every fuzz target built once: one cargo build, optimised, with the sanitizer; at a lower
# priority, so that tests running beside it keep their pace.
fuzz_build() {
  (cd "$ROOT/fuzz" && RUSTC_BOOTSTRAP=1 nice -n 10 cargo fuzz build -O)
}

# Each fuzz target run for SECONDS from its committed corpus (built first when it is not).
fuzz_briefly() {
  local seconds=$1 target work
  fuzz_build
  for target in "${FUZZ_TARGETS[@]}"; do
    work=$(mktemp -d)
    mkdir -p "$work/corpus"
    say "cargo fuzz run $target (${seconds} s)"
    if ! (cd "$ROOT/fuzz" && RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$target" "$work/corpus" "corpus/$target" -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$work/log" 2>&1); then
      tail -n 60 "$work/log"
      echo "fuzz target $target failed: the input is under fuzz/artifacts/$target/" >&2
      rm -rf "$work"
      return 1
    fi
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$work/log" || true
    rm -rf "$work"
  done
}

# What the end-to-end scenarios need on the machine: the emulator, schemathesis, PostgreSQL,
# Dovecot, a Secret Service, aiosmtpd, Wine with the Windows target, and the browser.
ensure_scenario_tools() {
  ensure_tools
  ensure_python_env
  ensure_schemathesis
  ensure_postgres
  ensure_dovecot
  ensure_secret_service
  ensure_aiosmtpd
  ensure_windows_target
  ensure_wine
  ensure_browser
}

# One shared target folder; debug builds (the emulator cannot run the release zips anyway).
build_workspace() {
  say "Building the workspace (debug)"
  cargo build --workspace --bins --locked
}

# LocalStack's Python package (the LocalStack path for users without Docker, see the README):
# on Python 3.13, with the pins it needs offline. S3, SQS and Secrets Manager answer; its
# DynamoDB, SES v2, API Gateway v2 and Lambda do not here, so only those adapter tests run on it.
LOCALSTACK_VERSION="2026.3.0"
ensure_localstack_core() {
  if "$ROOT/.venv-localstack/bin/python" -c "import importlib.metadata as m; assert m.version('localstack-core') == '$LOCALSTACK_VERSION'" 2>/dev/null; then
    return 0
  fi
  # The first Python 3.13 that runs (a pyenv shim does not without a selected version).
  local py="" candidate
  for candidate in "$(command -v python3.13 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c 'import venv' 2>/dev/null; then
      py=$candidate
      break
    fi
  done
  if [ -z "$py" ]; then
    echo "Python 3.13 not found: the adapter tests against LocalStack are skipped (install python3.13 to run them)" >&2
    return 1
  fi
  say "Creating .venv-localstack with localstack-core[runtime]==$LOCALSTACK_VERSION (once)"
  "$py" -m venv "$ROOT/.venv-localstack"
  "$ROOT/.venv-localstack/bin/pip" install --quiet --disable-pip-version-check \
    "localstack-core[runtime]==$LOCALSTACK_VERSION" 'cbor2<5.7' pyopenssl==24.2.1 \
    cryptography==43.0.3 service_identity==24.2.0
}

# Runs "$@" with LocalStack's package serving on a free port (CHARLIE_EMULATOR=localstack and
# CHARLIE_LOCALSTACK_ENDPOINT set for it), and stops it after. Its files stay under target/.
with_localstack_core() {
  local port dir pid status=0
  port=$("$ROOT/.venv-localstack/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  dir="$ROOT/target/charlie/localstack-$port"
  rm -rf "$dir" && mkdir -p "$dir"
  # OVERRIDE_IN_DOCKER=0: outside a container, whatever it guesses (else it writes to /var/lib,
  # /etc and /usr/lib); DNS_ADDRESS=0: no DNS server on port 53; SQS_ENDPOINT_STRATEGY=off: queue
  # URLs on the request's host, as moto's.
  (cd "$dir" && exec env OVERRIDE_IN_DOCKER=0 GATEWAY_LISTEN="127.0.0.1:$port" \
    LOCALSTACK_HOST="127.0.0.1:$port" FILESYSTEM_ROOT="$dir/fs" DNS_ADDRESS=0 \
    SQS_ENDPOINT_STRATEGY=off DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
    "$ROOT/.venv-localstack/bin/python" -m localstack.runtime.main >"$dir/localstack.log" 2>&1) &
  pid=$!
  for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$port/_localstack/init/ready" 2>/dev/null | grep -q '"completed": true'; then
      break
    fi
    sleep 0.5
  done
  CHARLIE_EMULATOR=localstack CHARLIE_LOCALSTACK_ENDPOINT="http://127.0.0.1:$port" "$@" || status=$?
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return "$status"
}
