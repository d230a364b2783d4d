/*
 * A sendmmsg UDP generator for `make bench`, the kind the reference nfqlb's lab figure came
 * from: one connected UDP socket per flow (source ports 10000.., destination port 9), each
 * sendmmsg call hands the kernel a batch of BATCH datagrams of one flow, flows taken in turn.
 * Every packet still walks the kernel's UDP/IP output path, which is what costs here; the
 * packet-socket generators (trafgen, AF_XDP) skip it. Runs until a signal ends it.
 *
 * usage: udp-flood <dst IPv4> <flows> <payload bytes>
 */
#define _GNU_SOURCE /* sendmmsg */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define MAX_FLOWS 1024
#define MAX_PAYLOAD 1472

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: udp-flood <dst IPv4> <flows> <payload bytes>\n");
    return 2;
  }
  struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons(9) };
  int flows = atoi(argv[2]);
  int payload = atoi(argv[3]);
  if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1 || flows < 1 || flows > MAX_FLOWS || payload < 0 || payload > MAX_PAYLOAD) {
    fprintf(stderr, "udp-flood: bad arguments (flows 1..%d, payload 0..%d)\n", MAX_FLOWS, MAX_PAYLOAD);
    return 2;
  }
  static int fd[MAX_FLOWS];
  for (int i = 0; i < flows; i++) {
    struct sockaddr_in src = { .sin_family = AF_INET, .sin_port = htons(10000 + i) };
    fd[i] = socket(AF_INET, SOCK_DGRAM, 0);
    /* connect(): the route and neighbour are looked up once, not per packet. */
    if (fd[i] < 0 || bind(fd[i], (struct sockaddr *)&src, sizeof src) != 0 || connect(fd[i], (struct sockaddr *)&dst, sizeof dst) != 0) {
      perror("udp-flood: socket");
      return 1;
    }
  }
  static char buf[MAX_PAYLOAD];
  struct iovec iov = { .iov_base = buf, .iov_len = (size_t)payload };
  static struct mmsghdr msgs[BATCH];
  for (int i = 0; i < BATCH; i++) {
    msgs[i].msg_hdr.msg_iov = &iov;
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  /* Errors (a full socket buffer, an ICMP error reported back) only mean "send the next batch". */
  for (int f = 0;; f = (f + 1) % flows) sendmmsg(fd[f], msgs, BATCH, 0);
}
