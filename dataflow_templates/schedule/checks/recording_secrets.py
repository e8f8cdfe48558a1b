"""A secrets backend that finds nothing and remembers every lookup: check_dag.py makes it
Airflow's ([secrets] backend, asked before the environment and the database), so that any
Variable or Connection read while the DAG file is parsed is seen, with or without a default."""

from __future__ import annotations

from airflow.sdk.bases.secrets_backend import BaseSecretsBackend

READS: list[str] = []


class RecordingBackend(BaseSecretsBackend):
    def get_variable(self, key: str) -> None:
        READS.append(f"Variable {key}")

    def get_conn_value(self, conn_id: str) -> None:
        READS.append(f"Connection {conn_id}")

    def get_config(self, key: str) -> None:
        return None
