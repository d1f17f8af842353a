"""mem0-fixed: the real mem0 (mem0ai) behind a small HTTP API, as the PRD describes it.

POST /memories {"messages": [...] | "text", "user_id": ..., "infer": false}  -> raw add (infer
defaults to false); GET /memories?user_id=U -> that user's memories; GET /health. pgvector store
(768 dims, sslmode=require), Ollama embedder at OLLAMA_BASE_URL. Telemetry is whatever
MEM0_TELEMETRY says: the e2e suite leaves it on so mem0's real home-calls happen.
"""

import os
import signal
import sys

from fastapi import FastAPI, HTTPException
from mem0 import Memory
from pydantic import BaseModel

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

OLLAMA = os.environ.get("OLLAMA_BASE_URL", "http://ollama:11434")
CONFIG = {
    "vector_store": {
        "provider": "pgvector",
        "config": {
            "host": os.environ.get("POSTGRES_HOST", "postgres"),
            "port": int(os.environ.get("POSTGRES_PORT", "5432")),
            "user": os.environ.get("POSTGRES_USER", "mem0"),
            "password": os.environ["POSTGRES_PASSWORD"],
            "dbname": os.environ.get("POSTGRES_DB", "mem0"),
            "collection_name": "memories",
            "embedding_model_dims": 768,
            "sslmode": "require",
        },
    },
    "embedder": {
        "provider": "ollama",
        "config": {"model": "nomic-embed-text", "ollama_base_url": OLLAMA, "embedding_dims": 768},
    },
    "llm": {"provider": "ollama", "config": {"model": "llama3.1", "ollama_base_url": OLLAMA}},
    "history_db_path": "/tmp/mem0-history.db",
}

app = FastAPI(title="mem0-fixed", version="1.0")
memory = Memory.from_config(CONFIG)


class AddRequest(BaseModel):
    messages: list[dict] | str
    user_id: str
    infer: bool = False
    metadata: dict | None = None


@app.get("/health")
def health() -> dict:
    return {"ok": True}


@app.post("/memories")
def add(req: AddRequest) -> dict:
    messages = req.messages
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    try:
        return memory.add(messages, user_id=req.user_id, infer=req.infer, metadata=req.metadata)
    except Exception as exc:  # the load gate counts errors; say what failed
        raise HTTPException(500, f"{type(exc).__name__}: {exc}") from exc


@app.get("/memories")
def get_all(user_id: str, limit: int = 100) -> dict:
    return memory.get_all(filters={"user_id": user_id}, top_k=limit)
