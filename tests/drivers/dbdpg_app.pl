#!/usr/bin/perl
# Perl DBI with DBD::Pg through the pooler in transaction mode, as an application uses it.
#
# Usage: perl dbdpg_app.pl HOST PORT CLIENTS ROUNDS
#
# DBD::Pg prepares a statement with placeholders on the server under its own name
# (dbdpg_p<pid>_<n>, Parse once, then Bind/Execute; pg_switch_prepared=1 makes that the first
# execution rather than the second), and when a statement handle goes away it sends
# "DEALLOCATE dbdpg_p<pid>_<n>" as a simple query: a name only the pooler knows, on whichever
# server connection the client holds then. Each client is its own process and connection, in
# AutoCommit, with its own TimeZone (SET) and application_name (in the DSN), and runs ROUNDS
# rounds of: a cached prepared query, a statement prepared and dropped each round (its
# DEALLOCATE), a check of its settings, a transaction (begin_work/commit) that inserts a row
# and sees a prepared statement on its server connection, a failed transaction rolled back,
# and every fifth round a COPY in (pg_putcopydata) and out (pg_getcopydata).
#
# Prints "ok ..." and exits 0, or prints what went wrong and exits 1.
use strict;
use warnings;
use DBI;
use DBD::Pg;

my @ZONES = ("UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York");

sub client {
    my ($host, $port, $i, $rounds) = @_;
    my $zone = $ZONES[$i % @ZONES];
    my $name = "dbdpg$i";
    my $dbh = DBI->connect(
        "dbi:Pg:dbname=postgres;host=$host;port=$port;application_name=$name",
        "postgres", "",
        { AutoCommit => 1, RaiseError => 1, PrintError => 0, pg_server_prepare => 1, pg_switch_prepared => 1 },
    );
    $dbh->do("SET TimeZone = '$zone'");
    for my $r (0 .. $rounds - 1) {
        my $add = $dbh->prepare_cached("select ?::int + 1000");
        $add->execute($i * 1000 + $r);
        my ($n) = $add->fetchrow_array;
        $add->finish;
        die "$name round $r: got $n\n" unless $n == $i * 1000 + $r + 1000;

        # A statement handle of its own each round: prepared, run, then deallocated by name
        # when the handle is dropped at the end of the block.
        {
            my $concat = $dbh->prepare("select ?::text || '-' || ?::int");
            $concat->execute($name, $r);
            my ($text) = $concat->fetchrow_array;
            die "$name round $r: concat gave $text\n" unless $text eq "$name-$r";
        }

        my $settings = $dbh->prepare_cached("select current_setting('application_name'), current_setting(?)");
        $settings->execute("TimeZone");
        my ($app, $tz) = $settings->fetchrow_array;
        $settings->finish;
        die "$name round $r: sees application_name=$app TimeZone=$tz\n" unless $app eq $name && $tz eq $zone;

        $dbh->begin_work;
        $dbh->do("insert into driver_rows (driver, client, round) values ('dbdpg', ?, ?)", undef, $i, $r);
        # The statements this client prepared are on the server connection the transaction
        # runs on, under the pooler's names.
        my ($prepared) = $dbh->selectrow_array("select count(*) from pg_prepared_statements");
        die "$name round $r: no prepared statement on the server connection\n" unless $prepared >= 1;
        $dbh->commit;

        $dbh->begin_work;
        # The SQLSTATE as the failing handle saw it (the statement handle's own DEALLOCATE
        # afterwards resets the database handle's).
        my $state = "";
        my $failed = !eval {
            local $dbh->{HandleError} = sub { $state = $_[1]->state; return 0 };
            $dbh->do("insert into driver_rows (driver, client, round) values ('dbdpg', ?, -1)", undef, $i);
            $dbh->selectrow_array("select 1 / (?::int - ?::int)", undef, $r, $r);
            1;
        };
        die "$name round $r: division by zero did not fail\n" unless $failed;
        die "$name round $r: failed with SQLSTATE $state: $@" unless $state eq "22012";
        $dbh->rollback;

        if ($r % 5 == 0) {
            $dbh->do("COPY driver_copy (client, line) FROM STDIN");
            for my $k (0 .. 19) {
                $dbh->pg_putcopydata("$i\t$name line $r.$k\n");
            }
            $dbh->pg_putcopyend;
            $dbh->do("COPY (select line from driver_copy where client = $i order by line) TO STDOUT");
            my ($lines, $line) = (0, "");
            while ($dbh->pg_getcopydata($line) >= 0) {
                $lines++;
            }
            die "$name round $r: copied back $lines lines\n" unless $lines == 20 * (int($r / 5) + 1);
        }
    }
    $dbh->disconnect;
}

my ($host, $port, $clients, $rounds) = @ARGV;
die "usage: perl dbdpg_app.pl HOST PORT CLIENTS ROUNDS\n" unless defined $rounds;
$| = 1;
my %children;
for my $i (0 .. $clients - 1) {
    my $pid = fork() // die "fork: $!\n";
    if ($pid == 0) {
        my $ok = eval { client($host, $port, $i, $rounds); 1 };
        print "client $i: $@" unless $ok;
        # POSIX::_exit: skip the parent's END blocks and destructors in the child.
        require POSIX;
        POSIX::_exit($ok ? 0 : 1);
    }
    $children{$pid} = $i;
}
my $failures = 0;
while ((my $pid = wait()) > 0) {
    $failures++ if $? != 0;
}
exit 1 if $failures;
print "ok DBD::Pg $DBD::Pg::VERSION: $clients clients x $rounds rounds\n";
