-- A 1,000-row result (~112 KB on the wire): streaming DataRow throughput through the proxy.
SELECT * FROM pgbench_accounts LIMIT 1000;
