#!/usr/bin/env bash
# Assemble a runnable Nextflow 25.04.4 from Maven Central (its jar and its dependencies, with
# a small pom and `mvn dependency:copy-dependencies`) and a `nextflow` launcher, into a cache
# directory outside the repository that later runs and CI reuse. Idempotent: does nothing
# when the launcher is there. The nextflow-marked tests skip without it.
#
# Why not the usual `curl get.nextflow.io | bash`: that launcher downloads its jar from
# GitHub at first start, which a machine with only a package registry cannot reach. Maven
# Central serves io.nextflow:nextflow up to 25.04.4 with its dependencies, except that
# nf-lang exists there only as 25.04.0 (pinned below) and io.seqera:lib-trace is missing
# (excluded: the local executor never loads it).
#
# Nextflow 25.04 needs Java 17 to 24 (Java 25: "Unsupported class file major version 69").
# The launcher takes $NXF_JAVA, else $JAVA_HOME/bin/java, else the first Java 17..24 found
# under /usr/lib/jvm, else `java` on PATH, and sets NXF_OFFLINE=true (no plugin or pipeline
# downloads).
#
# Prints the launcher's path on its last line of stdout. Exit status 0 when it is there and
# prints its version, 1 when Maven or a suitable Java is missing or the build failed.
set -euo pipefail

NXF_RELEASE="${NXF_RELEASE:-25.04.4}"
NF_LANG_VERSION="${NF_LANG_VERSION:-25.04.0}"

cache_root="${LINEAGE_LEDGER_NEXTFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lineage-ledger}"
home="$cache_root/nextflow-$NXF_RELEASE"
launcher="$home/bin/nextflow"

java_ok() {  # a java binary whose major version is 17..24
  local major
  major="$("$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)" || return 1
  [ -n "$major" ] && [ "$major" -ge 17 ] && [ "$major" -le 24 ]
}

find_java() {
  local candidate
  for candidate in "${NXF_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}" /usr/lib/jvm/*/bin/java \
                   "$(command -v java 2>/dev/null || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] && java_ok "$candidate" && { echo "$candidate"; return 0; }
  done
  return 1
}

if [ -x "$launcher" ] && [ -f "$home/lib/nextflow-$NXF_RELEASE.jar" ]; then
  echo "$launcher"
  exit 0
fi

if ! java_bin="$(find_java)"; then
  echo "install-nextflow: no Java 17..24 found (Nextflow $NXF_RELEASE does not run on Java 25)" >&2
  exit 1
fi
if ! command -v mvn >/dev/null 2>&1; then
  echo "install-nextflow: no Maven (mvn) on PATH; cannot fetch Nextflow $NXF_RELEASE" >&2
  exit 1
fi

started=$(date +%s)
build="$(mktemp -d "${TMPDIR:-/tmp}/install-nextflow.XXXXXX")"
trap 'rm -rf "$build"' EXIT
cat > "$build/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>lineage-ledger.local</groupId>
  <artifactId>nextflow-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>io.nextflow</groupId><artifactId>nf-lang</artifactId><version>$NF_LANG_VERSION</version>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>io.nextflow</groupId><artifactId>nextflow</artifactId><version>$NXF_RELEASE</version>
      <exclusions>
        <exclusion><groupId>io.seqera</groupId><artifactId>lib-trace</artifactId></exclusion>
      </exclusions>
    </dependency>
  </dependencies>
</project>
POM
echo "install-nextflow: fetching Nextflow $NXF_RELEASE and its dependencies from Maven" >&2
(cd "$build" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$build/lib") >&2

# Assemble beside the final place and rename, so that an interrupted build never leaves a
# half-filled directory that the check above would take for a finished one.
mkdir -p "$cache_root"
partial="$home.partial"
rm -rf "$partial"
mkdir -p "$partial/bin"
mv "$build/lib" "$partial/lib"
cat > "$partial/bin/nextflow" <<'LAUNCHER'
#!/usr/bin/env bash
# Nextflow launcher written by lineage-ledger's install-nextflow.sh: the jars in ../lib.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
java_ok() {
  local major
  major="$("$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)" || return 1
  [ -n "$major" ] && [ "$major" -ge 17 ] && [ "$major" -le 24 ]
}
java_bin="$(cat "$here/java" 2>/dev/null || true)"
if [ -n "${NXF_JAVA:-}" ]; then java_bin="$NXF_JAVA"; fi
if [ -z "$java_bin" ] || [ ! -x "$java_bin" ]; then
  for candidate in "${JAVA_HOME:+$JAVA_HOME/bin/java}" /usr/lib/jvm/*/bin/java "$(command -v java || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && java_ok "$candidate"; then java_bin="$candidate"; break; fi
  done
fi
export NXF_OFFLINE="${NXF_OFFLINE:-true}"
export NXF_HOME="${NXF_HOME:-$HOME/.nextflow}"
# The JVM options of Nextflow's own launcher that matter here: a small heap start, and the
# module openings Groovy needs on Java 17+.
exec "$java_bin" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xms64m ${NXF_OPTS:-} \
  --add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED \
  --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/java.nio.file.spi=ALL-UNNAMED \
  --add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED \
  --add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED \
  --add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED \
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/sun.nio.fs=ALL-UNNAMED \
  --add-opens=java.base/sun.net.www.protocol.http=ALL-UNNAMED \
  --add-opens=java.base/sun.net.www.protocol.https=ALL-UNNAMED \
  --add-opens=java.base/sun.net.www.protocol.ftp=ALL-UNNAMED \
  --add-opens=java.base/sun.net.www.protocol.file=ALL-UNNAMED \
  --add-opens=java.base/jdk.internal.misc=ALL-UNNAMED \
  --add-opens=java.base/jdk.internal.vm=ALL-UNNAMED \
  --add-opens=java.base/java.util.regex=ALL-UNNAMED \
  -cp "$here/lib/*" nextflow.cli.Launcher "$@"
LAUNCHER
chmod 755 "$partial/bin/nextflow"
echo "$java_bin" > "$partial/java"
if ! NXF_HOME="$partial/home-check" "$partial/bin/nextflow" -version >"$build/version.txt" 2>&1 \
   || ! grep -q "version $NXF_RELEASE" "$build/version.txt"; then
  cat "$build/version.txt" >&2
  echo "install-nextflow: the assembled Nextflow does not start" >&2
  rm -rf "$partial"
  exit 1
fi
rm -rf "$partial/home-check" "$home"
mv "$partial" "$home"
echo "install-nextflow: Nextflow $NXF_RELEASE ready in $(( $(date +%s) - started ))s ($java_bin)" >&2
echo "$launcher"
