// The ADR's Node clients against a replicated stack, with the ADR's own settings (lib/db.ts: pg's
// Pool; lib/redis.ts: ioredis and its retryStrategy), ioredis finding the master through the
// Sentinels. Settings come as JSON in argv, the passwords as JSON on stdin (never in argv or the
// environment). Prints one JSON line; exits 1 on a failure, which the line names.
const fs = require('fs');
const { Pool } = require('pg');
const Redis = require('ioredis');

function hostPort(address) {
  const [host, port] = address.split(':');
  return { host, port: Number(port) };
}

async function main() {
  const settings = JSON.parse(process.argv[2]);
  const secrets = JSON.parse(fs.readFileSync(0, 'utf8'));
  const pool = new Pool({
    ...hostPort(settings.postgresEndpoint), database: 'sinsolver', user: 'sinadmin', password: secrets.postgres,
    max: 20, idleTimeoutMillis: 30000, connectionTimeoutMillis: 2000,
  });
  const redis = new Redis({
    sentinels: settings.sentinels.map(hostPort), name: settings.masterName,
    password: secrets.redis, sentinelPassword: secrets.sentinel,
    retryStrategy: (times) => Math.min(times * 50, 2000),
  });
  try {
    const services = (await pool.query('SELECT count(*)::int AS n FROM services')).rows[0].n;
    const onLeader = (await pool.query('SELECT NOT pg_is_in_recovery() AS leader')).rows[0].leader;
    await redis.set('sin:adr-client', 'ok', 'EX', 60);
    const value = await redis.get('sin:adr-client');
    console.log(JSON.stringify({ services, onLeader, redis: value }));
  } finally {
    await pool.end();
    redis.disconnect();
  }
}

main().catch((error) => {
  console.log(JSON.stringify({ error: `${error.name}: ${error.message}` }));
  process.exit(1);
});
