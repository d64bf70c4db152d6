/* k3svirt's sandbox ("pause") process: PID 1 of every pod sandbox. It holds the pod's namespaces
 * open, reaps the zombies of processes that share its PID namespace, and exits 0 on SIGINT/SIGTERM.
 * All signals are blocked and taken synchronously with sigwaitinfo(), so nothing runs in a handler. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) { puts("k3svirt pause 3.10"); return 0; }
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    for (;;) {
        int sig = sigwaitinfo(&all, NULL);
        if (sig == SIGINT || sig == SIGTERM) return 0;
        if (sig == SIGCHLD)
            while (waitpid(-1, NULL, WNOHANG) > 0) {}
    }
}
