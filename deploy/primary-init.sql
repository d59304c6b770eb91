-- Run by the MariaDB image on first start: the replication user's privileges for replica-reader.
GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT ON *.* TO 'replica'@'%';
