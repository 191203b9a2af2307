"""Apache Kafka's jars and the Java that runs them: fetched once by Maven into the
project's cache (`.cache/kafka/<version>/libs`), complete or not at all.
`python -m imlab.kafka_dist fetch` fetches them now (make does this).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

from imlab.services import ServiceError

KAFKA_VERSION = "4.4.0"
KAFKA_ARTIFACT = "org.apache.kafka:kafka_2.13"
LOG4J_VERSION = "2.24.3"  # the slf4j binding Kafka's own distribution ships


class BrokerUnavailable(ServiceError):
    """The chosen broker cannot run here; the message says what to install."""


def cache_dir() -> Path:
    """The project's cache (`.cache/` beside pyproject.toml), or `$IMLAB_CACHE`."""
    if env := os.environ.get("IMLAB_CACHE"):
        return Path(env)
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").exists():
        return root / ".cache"
    return Path.home() / ".cache" / "imlab"


def java_binary() -> str:
    """`java` from $JAVA_HOME or PATH; a clear error when there is none."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(Path(home) / "bin" / "java", os.X_OK):
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise BrokerUnavailable(
            "Apache Kafka needs a Java runtime (17 or newer) and none was found: install a "
            "JDK (Debian: apt-get install openjdk-17-jdk-headless maven) or use --broker tansu"
        )
    return found


def java_available() -> bool:
    try:
        java_binary()
    except BrokerUnavailable:
        return False
    return True


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>imlab</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""


def kafka_libs(version: str = KAFKA_VERSION, *, quiet: bool = False) -> Path:
    """The folder of Apache Kafka's jars, fetched by Maven on first use.

    The jars land in `<cache>/kafka/<version>/libs`, complete or not at all (fetched
    into a scratch folder, then renamed), under a file lock so parallel first uses
    fetch once.
    """
    home = cache_dir() / "kafka" / version
    libs = home / "libs"
    if _complete(libs, version):
        return libs
    java_binary()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerUnavailable(
            "Apache Kafka's jars are fetched with Maven and `mvn` was not found: install "
            "Maven (Debian: apt-get install maven) or use --broker tansu"
        )
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(libs, version):
            return libs
        group, artifact = KAFKA_ARTIFACT.split(":")
        (home / "pom.xml").write_text(
            _POM.format(group=group, artifact=artifact, version=version, log4j=LOG4J_VERSION)
        )
        scratch = home / "libs.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        if not quiet:
            print(f"fetching Apache Kafka {version} with Maven into {libs} (once)", file=sys.stderr)
        cmd = [mvn, "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
               f"-DoutputDirectory={scratch}", "-DincludeScope=runtime"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not _complete(scratch, version):
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise BrokerUnavailable(
                f"Maven could not fetch {KAFKA_ARTIFACT}:{version} (is Maven Central "
                f"reachable?); use --broker tansu meanwhile. Maven said:\n{tail}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        scratch.rename(libs)
    return libs


def _complete(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").exists() and (
        libs / f"kafka-clients-{version}.jar"
    ).exists()


def main(argv: list[str] | None = None) -> None:
    """`python -m imlab.kafka_dist fetch`: fetch Apache Kafka's jars now."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["fetch"]:
        sys.exit("usage: python -m imlab.kafka_dist fetch")
    if not java_available():
        print("no Java runtime: Apache Kafka not fetched; stages will run on Tansu",
              file=sys.stderr)  # fmt: skip
        return
    try:
        print(kafka_libs())
    except BrokerUnavailable as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
