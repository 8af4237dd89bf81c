#Requires -Version 7.0
# The README's first command runs demo/Invoke-Demo.ps1 (through build.ps1 -Task Demo): it must keep working.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    $script:ModulePath = Get-TestModulePath
    $script:Demo = (Resolve-Path (Join-Path $PSScriptRoot '../demo/Invoke-Demo.ps1')).Path
}

Describe 'The demo' {
    It 'runs the user story to the end in a fresh process without AWS credentials' {
        $awsVars = [Environment]::GetEnvironmentVariables().Keys | Where-Object { $_ -like 'AWS_*' }
        $r = Invoke-ChildPwsh -RemoveEnvironment $awsVars -Script "& '$Demo' -ModulePath '$ModulePath' *>&1 | Out-String -Width 400; 'EXIT=' + [int](-not `$?)" -TimeoutSeconds 300
        $r.Output | Should -Match 'Demo finished\.'
        $r.Output | Should -Match 'DBUser=app_reader'
        $r.Output | Should -Match 'bravo'          # a row of the seeded table, as the IAM user, through the tunnel
        $r.Output | Should -Match 'create role app_reader'
        $r.Output | Should -Match 'rds-db:connect'
        $r.Output | Should -Match '42501|permission denied'
        $r.Output | Should -Match 'i-0a1b2c3d4e5f60001'
        $r.Output | Should -Not -Match 'sandbox/Secret/Key'
    }
}
