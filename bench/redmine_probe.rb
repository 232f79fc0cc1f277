# Appended to config.ru by bench/redmine_probe.py: one JSON line per MailHandler.receive in
# <instance>/log/probe.jsonl, saying what failed and whether the issue was committed first.
#   subject, pid, seconds          the message and how long receive took
#   issue, commit_at               the issue's id once committed (after_create_commit), and when
#   after                          every SQL statement after that commit ("Name: SQL...")
#   error, message, frames, sql    for an exception: its class, Redmine's frames, and the
#                                  request's last statements (the failing one has "error")
PROBE_LOG = File.join(File.dirname(ActiveRecord::Base.connection_db_config.database), "..",
                      "log", "probe.jsonl")

module RedmineProbe
  def self.now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  def self.state = Thread.current[:redmine_probe]

  def self.setting(payload)
    binds = payload[:type_casted_binds]
    binds = binds.call if binds.respond_to?(:call)
    payload[:name] == "Setting Load" ? " #{Array(binds).first}" : ""
  end
end

ActiveSupport::Notifications.subscribe("sql.active_record") do |*, payload|
  state = RedmineProbe.state
  next unless state
  state[:sql] << {name: payload[:name], sql: payload[:sql].to_s[0, 120],
                  at: (RedmineProbe.now - state[:t0]).round(3), error: payload[:exception]&.first}
  state[:sql].shift while state[:sql].size > 14
  state[:after] << "#{payload[:name]}: #{payload[:sql].to_s[0, 30]}#{RedmineProbe.setting(payload)}" if state[:issue]
end

Issue.after_create_commit do |issue|
  if (state = RedmineProbe.state)
    state[:issue] = issue.id
    state[:commit_at] = (RedmineProbe.now - state[:t0]).round(3)
  end
end

MailHandler.singleton_class.prepend(Module.new do
  define_method(:receive) do |*args|
    state = Thread.current[:redmine_probe] = {t0: RedmineProbe.now, sql: [], after: []}
    record = {pid: Process.pid, subject: args.first.to_s[/^Subject: (.*?)\r?$/, 1]}
    begin
      super(*args)
    rescue => e
      record.merge!(error: e.class.name, message: e.message[0, 200],
                    frames: e.backtrace.grep(%r{/usr/share/redmine/(app|lib)/}).first(8),
                    sql: state[:sql])
      raise  # safe_receive logs it and answers false: a 422
    ensure
      record.merge!(seconds: (RedmineProbe.now - state[:t0]).round(3), issue: state[:issue],
                    commit_at: state[:commit_at], after: state[:after])
      Thread.current[:redmine_probe] = nil
      File.open(PROBE_LOG, "a") { |log| log.puts(JSON.generate(record)) }
    end
  end
end)
