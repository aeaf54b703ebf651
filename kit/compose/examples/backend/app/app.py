"""A small real backend: every request reads and writes Redis and MariaDB.

Runs on Debian's python3-flask, python3-redis and python3-pymysql (the image debian-backend).
GET /        counts the visit in Redis (INCR) and in MariaDB (INSERT, then COUNT), returns JSON
GET /health  200 once both answer
Configuration from the environment: PORT, REDIS_HOST, REDIS_PORT, DB_HOST, DB_PORT.
"""

import os
import socket
import threading

import pymysql
import redis
from flask import Flask, jsonify

app = Flask(__name__)
_local = threading.local()  # one connection of each kind per server thread


def cache():
    if getattr(_local, "redis", None) is None:
        _local.redis = redis.Redis(host=os.environ.get("REDIS_HOST", "cache"),
                                   port=int(os.environ.get("REDIS_PORT", "6379")), socket_timeout=5)
    return _local.redis


def db():
    conn = getattr(_local, "db", None)
    if conn is None or not conn.open:
        conn = _local.db = pymysql.connect(host=os.environ.get("DB_HOST", "db"),
                                           port=int(os.environ.get("DB_PORT", "3306")),
                                           user="root", autocommit=True, connect_timeout=5)
        with conn.cursor() as c:
            c.execute("CREATE DATABASE IF NOT EXISTS kit")
            c.execute("CREATE TABLE IF NOT EXISTS kit.visits (id INT AUTO_INCREMENT PRIMARY KEY, "
                      "host VARCHAR(64), at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)")
    return conn


@app.get("/")
def visit():
    hits = cache().incr("hits")
    with db().cursor() as c:
        c.execute("INSERT INTO kit.visits (host) VALUES (%s)", (socket.gethostname(),))
        c.execute("SELECT COUNT(*) FROM kit.visits")
        visits = c.fetchone()[0]
    return jsonify(redis_hits=hits, db_visits=visits, served_by=socket.gethostname())


@app.get("/health")
def health():
    cache().ping()
    db().ping(reconnect=True)
    return jsonify(ok=True)


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=int(os.environ.get("PORT", "8080")), threaded=True)
