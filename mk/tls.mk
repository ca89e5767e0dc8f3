# TLS, token and auth plugins: what their tests need.  Included by the Makefile.
# openssl makes the test certificates; redis-server backs the TokenRedis tests.
TLS_APT_PACKAGES := openssl redis-server
