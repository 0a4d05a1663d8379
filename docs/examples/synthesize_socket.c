/* Accept one TCP connection on 127.0.0.1:PORT and synthesize the overlay it
 * carries while it arrives: each recv() is fed to the library at once, so the
 * launch VM is ready moments after the last byte.
 *
 *   cc -std=c99 -Wall -Wextra synthesize_socket.c $(pkg-config --cflags --libs vmsynth)
 *   ./a.out BASE_DIR OUT_DIR PORT        (then: nc 127.0.0.1 PORT < app.vmo)
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <vmsynth/vmsynth.h>

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s BASE_DIR OUT_DIR PORT\n", argv[0]);
    return 2;
  }
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {0};
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)atoi(argv[3]));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 1) != 0) {
    perror("listen");
    return 6;
  }
  int conn = accept(listener, NULL, NULL);
  close(listener);
  if (conn < 0) {
    perror("accept");
    return 6;
  }

  vmsynth_params *params = vmsynth_params_new();
  vmsynth_params_set(params, "threads", "0"); /* one per core */
  vmsynth_synth *s = NULL;
  int rc = vmsynth_synth_open(&s, argv[1], argv[2], params);
  vmsynth_params_free(params); /* copied by open */

  static char buf[1 << 16];
  ssize_t n;
  while (rc == VMSYNTH_OK && (n = recv(conn, buf, sizeof buf, 0)) > 0) rc = vmsynth_synth_feed(s, buf, (size_t)n);
  if (rc == VMSYNTH_OK) rc = vmsynth_synth_finish(s); /* a recv error ends the stream early: finish says so */
  close(conn);

  if (rc == VMSYNTH_OK) {
    char *json = NULL;
    vmsynth_synth_stats_json(s, &json);
    printf("%s\n", json);
    vmsynth_free(json);
  } else {
    fprintf(stderr, "synthesis failed (%s): %s\n", vmsynth_status_name(rc), s ? vmsynth_synth_error(s) : "");
  }
  vmsynth_synth_free(s); /* after a failure: nothing is left at OUT_DIR */
  return rc;
}
