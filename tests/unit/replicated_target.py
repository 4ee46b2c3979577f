"""A replicated stack's target as the dynamic resources' state holds it (Target.to_dict), for their
providers' tests."""

TARGET = {"stack": "prod", "postgres": {"host": "10.9.0.2", "port": 5000, "database": "sinsolver", "user": "sinadmin",
                                        "password": "s" * 20, "container_name": "prod-patroni",
                                        "container_ip": "10.9.0.2", "major_version": 16},
          "redis": {"host": "10.9.0.2", "port": 6379, "password": "d" * 20, "container_name": "prod-redis",
                    "container_ip": "10.9.0.2", "major_version": 7},
          "cluster": {"members": ["10.9.0.2", "10.9.0.3", "10.9.0.4"], "patroni_rest_port": 8008,
                      "sentinel_port": 26379, "sentinel_password": "n" * 20, "master_name": "sin-redis"}}
