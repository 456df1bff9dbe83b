# syntax=docker/dockerfile:1
# Build: docker build -t regmirror .
# Run:   docker run -d -p 5000:5000 -v regmirror:/var/lib/regmirror regmirror

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/regmirror ./cmd/regmirror \
 && mkdir -p /out/data

# distroless/static: no shell, no package manager, a non-root user (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/regmirror /usr/local/bin/regmirror
# The volume's mount point, owned by the user, so a fresh named volume is writable.
COPY --from=build --chown=65532:65532 /out/data /var/lib/regmirror
ENV REGMIRROR_DATA_DIR=/var/lib/regmirror \
    REGMIRROR_ADDR=:5000
VOLUME ["/var/lib/regmirror"]
EXPOSE 5000
USER 65532:65532
# No shell in the image: the binary checks itself (GET /readyz).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/regmirror", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/regmirror"]
CMD ["serve"]
