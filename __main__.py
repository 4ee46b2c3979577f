"""Entry point of `pulumi up` / `pulumi preview`: the program lives in infra.program."""

from infra.program import program

program()
