-- ADR-006 schema, exactly as the ADR gives it: services registry, configuration store,
-- logs, audit trail and their four indexes. Applied files are immutable: put changes in
-- a new V<next>__<description>.sql.

-- Services Registry
CREATE TABLE services (
    id SERIAL PRIMARY KEY,
    name VARCHAR(100) UNIQUE NOT NULL,
    category VARCHAR(50) NOT NULL,
    container_name VARCHAR(100) NOT NULL,
    ip_address INET NOT NULL,
    port INTEGER NOT NULL,
    domain VARCHAR(255),
    status VARCHAR(20) DEFAULT 'inactive',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

-- Configuration Store
CREATE TABLE configurations (
    id SERIAL PRIMARY KEY,
    service_id INTEGER REFERENCES services(id),
    key VARCHAR(255) NOT NULL,
    value JSONB NOT NULL,
    encrypted BOOLEAN DEFAULT false,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(service_id, key)
);

-- Logs
CREATE TABLE logs (
    id BIGSERIAL PRIMARY KEY,
    service_id INTEGER REFERENCES services(id),
    level VARCHAR(20) NOT NULL,
    message TEXT NOT NULL,
    metadata JSONB,
    timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

-- Audit Trail
CREATE TABLE audit_trail (
    id BIGSERIAL PRIMARY KEY,
    action VARCHAR(100) NOT NULL,
    actor VARCHAR(255) NOT NULL,
    resource_type VARCHAR(100) NOT NULL,
    resource_id VARCHAR(255),
    changes JSONB,
    timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

-- Indexes
CREATE INDEX idx_logs_service_timestamp ON logs(service_id, timestamp DESC);
CREATE INDEX idx_logs_level ON logs(level);
CREATE INDEX idx_audit_timestamp ON audit_trail(timestamp DESC);
CREATE INDEX idx_configurations_key ON configurations(service_id, key);
